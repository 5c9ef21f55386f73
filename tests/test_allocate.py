"""Tests for kqreg.allocate: budgets, the knapsack solver, exported sizes."""

import itertools
import math
import re

import kqreg
import numpy as np
import pytest
import tf_keras
from kqreg import export
from kqreg.mixed_precision.allocator import allocation
from kqreg.mixed_precision.budget import Budget, parse_budget
from kqreg.mixed_precision.knapsack import solve
from kqreg.mixed_precision.quantizable import stored_bytes

CHOICES = (2, 3, 4, 8)


def _conv_model():
  """72 + 1,152 + 160 = 1,384 kernel weights (5,536 float32 bytes)."""
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input((8, 8, 1))
  x = tf_keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
  x = tf_keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  outputs = tf_keras.layers.Dense(10, name="head")(x)
  return tf_keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def conv():
  model = _conv_model()
  x = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
  rows = kqreg.sensitivity(model, x, bits=CHOICES, base="w8a8")
  return model, x, rows


@pytest.mark.parametrize("text,kind,value,unit", [
    (4, "bits", 4.0, "bits"), (3.5, "bits", 3.5, "bits"),
    ("3.5", "bits", 3.5, "bits"), (" 4 ", "bits", 4.0, "bits"),
    ("0.15x", "ratio", 0.15, "x"), (".25x", "ratio", 0.25, "x"),
    ("120KiB", "bytes", 120.0, "KiB"), ("64KB", "bytes", 64.0, "KB"),
    ("64kB", "bytes", 64.0, "kB"), ("2000B", "bytes", 2000.0, "B"),
    ("1.5 MiB", "bytes", 1.5, "MiB"), ("2MB", "bytes", 2.0, "MB"),
])
def test_parse_budget_spellings(text, kind, value, unit):
  budget = parse_budget(text)
  assert (budget.kind, budget.value, budget.unit) == (kind, value, unit)
  assert parse_budget(str(budget)) == budget
  assert parse_budget(budget) is budget


def test_budget_capacity_in_solver_units():
  assert parse_budget("120KiB").capacity(10**6) == 120 * 1024
  assert parse_budget("64KB").capacity(10**6) == 64000
  assert parse_budget("0.15x").capacity(1000) == 600   # 0.15 * 4 bytes each
  assert parse_budget(3).capacity(1000) == 3000         # bits * params


@pytest.mark.parametrize("junk", [
    "", "abc", "0", "-1", "0x", "0.15xx", "4 bits", "4b", "12XB", "KiB",
    "nan", "inf", "1e999", "4,5", True, None, [4], float("nan"), -2.0])
def test_parse_budget_rejects_junk(junk):
  with pytest.raises(ValueError, match=r"0\.15x.*KiB.*2000B"):
    parse_budget(junk)


def _brute_force(costs, weights, capacity):
  best = math.inf
  for pick in itertools.product(*[range(len(c)) for c in costs]):
    if sum(w[j] for w, j in zip(weights, pick)) <= capacity:
      best = min(best, sum(c[j] for c, j in zip(costs, pick)))
  return best


@pytest.mark.parametrize("seed", range(10))
def test_dp_equals_brute_force(seed):
  rng = np.random.default_rng(seed)
  layers = int(rng.integers(3, 6))
  costs, weights = [], []
  for _ in range(layers):
    choices = int(rng.integers(2, 5))
    costs.append(list(rng.random(choices) * 10 ** rng.uniform(-3, 1)))
    # A common factor on some seeds exercises the divisor reduction.
    scale = int(rng.choice([1, 1, 7, 12]))
    weights.append([scale * int(w) for w in rng.integers(0, 60, choices)])
  low = sum(min(w) for w in weights)
  high = sum(max(w) for w in weights)
  capacity = int(rng.integers(low, high + 1))
  best = _brute_force(costs, weights, capacity)

  def check(chosen):
    assert sum(w[j] for w, j in zip(weights, chosen)) <= capacity
    return sum(c[j] for c, j in zip(costs, chosen))

  chosen, exact = solve(costs, weights, capacity)
  assert exact
  assert check(chosen) == pytest.approx(best, rel=1e-12, abs=1e-15)
  # The fallback for large axes (coarsened, weights rounded up, then
  # greedy) stays within the budget and cannot beat the optimum.
  chosen, _ = solve(costs, weights, capacity, max_cells=3 * layers)
  assert check(chosen) >= best - 1e-12
  with pytest.raises(ValueError, match="Nothing fits"):
    solve(costs, weights, low - 1)


def _branches_model(loud_scale=30.0):
  """Three parallel Dense(16) branches added: the output sums their noise."""
  tf_keras.utils.set_random_seed(1)
  inputs = tf_keras.Input((16,))
  branches = [tf_keras.layers.Dense(16, name=name)(inputs)
              for name in ("quiet_a", "loud", "quiet_b")]
  model = tf_keras.Model(inputs, tf_keras.layers.Add()(branches))
  loud = model.get_layer("loud")
  loud.kernel.assign(loud.kernel * loud_scale)
  return model


@pytest.mark.parametrize("budget", [4, "0.17x"])
def test_sensitive_layer_gets_more_bits(budget):
  model = _branches_model()
  x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
  result = allocation(model, x, budget, base="w8a8")
  # 4 bits: 8 + 2 + 2 = 3 x 4. 0.17x of 768 float32 weights is 522 bytes:
  # INT8 + INT4 + INT4 = 512; at INT4 the quiet ones take their least
  # noisy choice, 4 bits.
  quiet = 2 if budget == 4 else 4
  assert result.bits == {"quiet_a": quiet, "loud": 8, "quiet_b": quiet}
  assert str(result.policy) == f"w{quiet}a8,loud=w8a8"


def _export_kernel_rows(model, policy, x, path):
  qat = kqreg.quantize(model, policy)
  qat(x, training=True)  # sets the weight ranges
  report = export.export_tflite(qat, str(path), representative_data=x, float_reference=False)
  return [r for r in report["weights"] if r["role"] == "weights"]


# Budgets that mix bit-widths (e.g. 3.5 -> "w8a8,conv2=w3a8,head=w4a8").
@pytest.mark.parametrize("budget,base", [
    ("3.5", "w8a8"), ("0.14x", "w8a8"), ("0.75KiB", "w8a8"), ("760B", "w8a8"),
    ("2.5", "w8")])
def test_budget_honoured_in_the_exported_file(conv, tmp_path, budget, base):
  model, x, rows = conv
  result = allocation(model, x, budget, base=base,
                      rows=rows if base == "w8a8" else None)
  assert len(set(result.bits.values())) > 1, result.policy
  kernels = _export_kernel_rows(model, result.policy, x,
                                tmp_path / "m.tflite")
  assert sorted(r["layer"] for r in kernels) == ["conv1", "conv2", "head"]
  stored = sum(r["bytes"] for r in kernels)
  assert stored == result.weight_bytes
  for r in kernels:
    assert r["bits"] == result.bits[r["layer"]]
    assert r["bytes"] == stored_bytes(r["elements"], r["bits"],
                                      base == "w8a8"), r
  parsed = parse_budget(budget)
  elements = sum(r["elements"] for r in kernels)
  if parsed.kind == "bits":
    mean_bits = sum(r["bits"] * r["elements"] for r in kernels) / elements
    assert mean_bits <= parsed.value
    assert mean_bits == pytest.approx(result.mean_bits)
  elif parsed.kind == "ratio":
    assert stored <= parsed.value * 4 * elements
  else:
    assert stored <= parsed.capacity(elements)


@pytest.mark.parametrize("budget,unit", [
    (1.5, ""), ("0.1x", "x"), ("500B", "B"), ("0.5KiB", "KiB"),
    ("0.6kB", "kB")])
def test_impossible_budget_names_the_smallest(conv, budget, unit):
  model, x, rows = conv
  with pytest.raises(ValueError) as info:
    allocation(model, x, budget, base="w8a8,first=w8a8", rows=rows)
  message = str(info.value)
  assert "\n" not in message
  smallest = re.search(r"smallest achievable (\S+)", message).group(1)
  assert re.fullmatch(r"[0-9.]+" + re.escape(unit), smallest), smallest
  # The stated minimum is achievable: every free layer at its fewest bits
  # (for bytes, any <= 4 bits: all are INT4).
  result = allocation(model, x, smallest, base="w8a8,first=w8a8", rows=rows)
  assert result.bits["conv1"] == 8
  if unit:
    assert result.weight_bytes == 72 + 576 + 80
  else:
    assert result.bits == {"conv1": 8, "conv2": 2, "head": 2}


def test_base_pins_skips_and_activation_bits(conv):
  model, x, rows = conv
  result = allocation(model, x, 4, base="w4a8,first=w8a8,skip=head",
                      rows=rows)
  text = str(result.policy)
  assert "first=w8a8" in text and "skip=head" in text
  assert all("a8" in token for token in text.split(",")
             if not token.startswith("skip="))
  assert set(result.bits) == {"conv1", "conv2"}   # head stays float
  assert result.pinned == ("conv1",) and result.bits["conv1"] == 8
  # conv1 (72 weights at 8 bits) counts: conv2 gets what is left.
  assert result.bits["conv2"] == 3
  assert result.mean_bits == pytest.approx((8 * 72 + 3 * 1152) / 1224)
  assert kqreg.qat.policy.BitPolicy.parse(text) == result.policy
  qat = kqreg.quantize(model, text)
  assert {l.name for l in kqreg.qat.profile(qat).layers
          if l.weight_bits is not None} == {"quant_conv1", "quant_conv2"}


def test_rows_alone_suffice_and_match_computed(conv):
  model, x, rows = conv
  from_rows = kqreg.allocate(model, None, "0.2x", base="w8a8", rows=rows)
  computed = kqreg.allocate(model, x, "0.2x", base="w8a8")
  assert str(from_rows) == str(computed)
  with pytest.raises(ValueError, match="no row for layer 'conv1' at w3"):
    kqreg.allocate(model, None, 4, base="w8a8",
                   rows=[r for r in rows if r["bits"] != 3])
  with pytest.raises(ValueError, match="`objective` must be one of"):
    kqreg.allocate(model, x, 4, objective="size")


def test_loss_objective_needs_labels(conv):
  model, x, rows = conv
  with pytest.raises(ValueError, match="objective='loss' needs"):
    kqreg.allocate(model, None, 4, base="w8a8", rows=rows, objective="loss")
  y = np.random.default_rng(0).integers(0, 10, len(x))
  model.compile(loss=tf_keras.losses.SparseCategoricalCrossentropy(
      from_logits=True))
  policy = kqreg.allocate(model, (x, y), 4, base="w8a8", objective="loss")
  assert isinstance(policy, kqreg.BitPolicy)
  # Labels do no harm to the default objective.
  assert kqreg.allocate(model, (x, y), 4, base="w8a8") == kqreg.allocate(
      model, x, 4, base="w8a8")


def test_budget_is_a_value_object():
  assert Budget("bits", 4.0, "bits") == parse_budget("4")
  assert str(parse_budget("0.150x")) == "0.15x"
