"""Tests for kqreg.sensitivity on tiny Dense and Conv models."""

import csv
import math
import os

import kqreg
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from kqreg.qat import quantizers
from kqreg.mixed_precision.layer_sensitivity import SENSITIVITY_KEYS
from kqreg.mixed_precision.quantizable import quantizable_layers, stored_bytes
from kqreg.mixed_precision.sensitivity_report import sensitivity_table, write_sensitivity

from conftest import small_cnn

BITS = (2, 4, 8)


def _loss():
  return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _by(rows, key="measured"):
  return {(r["layer"], r["bits"]): r[key] for r in rows}


def test_rows_cover_every_layer_and_bit_width(cnn, batch):
  x, _ = batch
  rows = kqreg.sensitivity(cnn, x, bits=(8, 2, 4))
  assert [(r["layer"], r["bits"]) for r in rows] == [
      (name, b) for name in ("conv_a", "conv_b", "head") for b in BITS]
  params = {"conv_a": 72, "conv_b": 576, "head": 1280}
  for r in rows:
    assert set(SENSITIVITY_KEYS) <= set(r)
    assert r["params"] == params[r["layer"]]
    # No base: weight-only, which the converter stores as INT8 at any bits.
    assert r["storage"] == "INT8" and r["weight_bytes"] == r["params"]
    assert r["measured"] > 0 and r["loss_increase"] is None
    assert r["predicted"] > 0 and r["measured_local"] > 0


def test_model_is_left_unchanged(cnn, batch):
  x, _ = batch
  before = [w.numpy().copy() for w in cnn.weights]
  kqreg.sensitivity(cnn, x, bits=BITS)
  for old, new in zip(before, cnn.weights):
    np.testing.assert_array_equal(old, new.numpy())


def test_measured_is_the_one_layer_quantized_model(cnn, batch):
  # Independent of the swap: quantize conv_b's kernel by kqreg's quantizer
  # in a copy and compare the outputs.
  x, _ = batch
  rows = kqreg.sensitivity(cnn, x, bits=(3,))
  copy = small_cnn()
  copy.set_weights(cnn.get_weights())
  kernel = copy.get_layer("conv_b").kernel
  q = quantizers.WeightQuantizer(3, per_axis=True)
  ranges = {"min_var": tf.Variable(tf.zeros(8)),
            "max_var": tf.Variable(tf.zeros(8))}
  kernel.assign(q(kernel, training=True, weights=ranges))
  y, y_q = cnn(x).numpy(), copy(x).numpy()
  expected = np.linalg.norm(y_q - y) / np.linalg.norm(y)
  assert _by(rows)["conv_b", 3] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("policy", ["w8", "w4a8"])
def test_float_and_qat_rows_agree(cnn, batch, policy):
  x, y = batch
  rows = kqreg.sensitivity(cnn, (x, y), bits=BITS, loss=_loss())
  qat = kqreg.quantize(cnn, policy)
  qat(x, training=True)  # sets the weight ranges (and moves BN statistics)
  qat_rows = kqreg.sensitivity(qat, (x, y), bits=BITS, loss=_loss())
  assert [(r["layer"], r["bits"]) for r in qat_rows] == [
      (r["layer"], r["bits"]) for r in rows]
  for got in (_by(rows), _by(qat_rows)):
    for layer in ("conv_a", "conv_b", "head"):
      assert got[layer, 8] < 0.01
      # Each step shrinks Δ by 7x (2 -> 4 bits) and 18x (4 -> 8 bits).
      assert got[layer, 2] > got[layer, 4] > got[layer, 8]
  # Same float weights and ranges; only BN's moving statistics moved.
  for key, value in _by(rows).items():
    assert _by(qat_rows)[key] == pytest.approx(value, rel=0.05), key
  if policy == "w4a8":
    # a8 somewhere: the export stores <= 4-bit kernels as packed INT4.
    for r in qat_rows:
      assert r["weight_bytes"] == (
          (r["params"] + 1) // 2 if r["bits"] <= 4 else r["params"])


def _first_order_model(kind):
  tf_keras.utils.set_random_seed(3)
  if kind == "dense":
    inputs = tf_keras.Input((128,))
    outputs = tf_keras.layers.Dense(128, name="layer")(inputs)
    x = np.random.default_rng(3).standard_normal((512, 128))
  else:
    inputs = tf_keras.Input((8, 8, 16))
    outputs = tf_keras.layers.Conv2D(64, 3, padding="same",
                                     name="layer")(inputs)
    x = np.random.default_rng(3).standard_normal((16, 8, 8, 16))
  return tf_keras.Model(inputs, outputs), x.astype(np.float32)


def _patch_matrix(model, x):
  """Rows are the layer's receptive fields: y = P @ w per output channel."""
  layer = model.get_layer("layer")
  if isinstance(layer, tf_keras.layers.Dense):
    return x
  kh, kw = layer.kernel_size
  patches = tf.image.extract_patches(x, [1, kh, kw, 1], [1, 1, 1, 1],
                                     [1, 1, 1, 1], "SAME")
  return patches.numpy().reshape(-1, patches.shape[-1])


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_measured_within_the_cauchy_schwarz_bound_and_chebyshev_at_6_8_bits(kind):
  """The bounds the additive model gives for m = ‖δ * x‖, p = its prediction.

  Always: |δ| <= Δ/2 (the range covers every weight), so each output
  |Σ_i δ_i x_i| <= Δ_c/2 · √k · ‖x_rf‖ (Cauchy–Schwarz, k = fan-in), hence
  m² <= 3k · p² with p² = Σ_c Δ_c²/12 · Σ‖x_rf‖².

  If δ is iid uniform (the model's premise; it holds for Glorot-uniform
  weights at 6 and 8 bits): m² = Σ_c δ_cᵀ A δ_c with A = PᵀP, E m² = p², and
  Var m² <= 2 Σ_c σ_c⁴ tr(A²) (the uniform's excess kurtosis is negative).
  Chebyshev: |m²/p² − 1| <= t fails with probability <= α for
  t = √(Var m² / α) / p². α = 10⁻³. Below 6 bits Glorot weights make δ
  far from uniform; tests/test_noise.py checks the prediction there on
  kernels whose δ is uniform by construction.
  """
  model, x = _first_order_model(kind)
  rows = kqreg.sensitivity(model, x, bits=(2, 3, 4, 6, 8))
  layer = model.get_layer("layer")
  kernel = layer.kernel.numpy()
  fan_in = int(np.prod(kernel.shape[:-1]))
  patches = _patch_matrix(model, x).astype(np.float64)
  gram = patches.T @ patches
  for r in rows:
    ratio = r["measured_local"] / r["predicted"]
    assert ratio**2 <= 3 * fan_in, r
    if r["bits"] < 6:
      continue
    peak = (np.abs(kernel).max() if kind == "dense" else
            np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0))
    step = quantizers.nudged_grid(-peak, peak, r["bits"], True)[2].numpy()
    sigma2 = np.broadcast_to(np.square(step.astype(np.float64)) / 12,
                             (kernel.shape[-1],))
    mean = sigma2.sum() * np.trace(gram)
    variance = 2 * np.sum(sigma2**2) * np.sum(gram * gram)
    t = math.sqrt(variance / 1e-3) / mean
    assert t < 0.75, t  # the bound is informative for these sizes
    assert 1 - t <= ratio**2 <= 1 + t, (r, t)


def test_every_weighted_family():
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input((8, 8, 3))
  x = tf_keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(inputs)
  x = tf_keras.layers.SeparableConv2D(8, 3, padding="same", name="sep")(x)
  x = tf_keras.layers.Conv2DTranspose(4, 3, strides=2, name="up")(x)
  x = tf_keras.layers.Flatten()(x)
  outputs = tf_keras.layers.Dense(3, name="head")(x)
  model = tf_keras.Model(inputs, outputs)
  data = np.random.default_rng(0).random((8, 8, 8, 3), dtype=np.float32)
  rows = kqreg.sensitivity(model, data, bits=(4, 8))
  got = {r["layer"]: r for r in rows if r["bits"] == 4}
  assert list(got) == ["dw", "sep", "up", "head"]
  # Both kernels of the separable conv: 3*3*3 depthwise + 3*8 pointwise.
  assert got["sep"]["params"] == 27 + 24
  for name in ("dw", "head"):
    assert got[name]["predicted"] is not None
  for name in ("sep", "up"):  # outside the first-order model
    assert got[name]["predicted"] is None
    assert got[name]["measured_local"] > 0
  for r in rows:
    assert r["measured"] > 0


def test_base_leaves_out_skipped_layers_and_sets_storage(cnn, batch):
  x, _ = batch
  rows = kqreg.sensitivity(cnn, x, bits=(3, 6), base="w8a8,skip=conv_b")
  assert sorted({r["layer"] for r in rows}) == ["conv_a", "head"]
  for r in rows:
    assert r["storage"] == ("INT4" if r["bits"] <= 4 else "INT8")
    assert r["weight_bytes"] == stored_bytes(r["params"], r["bits"], True)
  layers, int4 = quantizable_layers(cnn, "w4,first=w8,Dense=w2")
  assert not int4
  assert [(l.name, l.bits.weight, l.pinned) for l in layers] == [
      ("conv_a", 8, True), ("conv_b", 4, False), ("head", 2, True)]


def test_data_forms_and_loss(cnn, batch):
  x, y = batch
  pair = kqreg.sensitivity(cnn, (x, y), bits=(2,), loss=_loss())
  assert all(isinstance(r["loss_increase"], float) for r in pair)
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
  from_dataset = kqreg.sensitivity(cnn, dataset, bits=(2,), loss=_loss())
  assert _by(from_dataset, "loss_increase") == pytest.approx(
      _by(pair, "loss_increase"))
  cnn.compile(loss=_loss())
  compiled = kqreg.sensitivity(cnn, (x, y), bits=(2,))
  assert _by(compiled, "loss_increase") == pytest.approx(
      _by(pair, "loss_increase"))
  with pytest.raises(ValueError, match="loss="):
    kqreg.sensitivity(small_cnn(), (x, y), bits=(2,))
  with pytest.raises(ValueError, match="between 2 and 8"):
    kqreg.sensitivity(cnn, x, bits=(1,))


def test_table_and_files(cnn, batch, tmp_path):
  x, y = batch
  rows = kqreg.sensitivity(cnn, (x, y), bits=BITS, loss=_loss())
  table = sensitivity_table(rows)
  assert "conv_b" in table and "w2" in table and "loss increase" in table
  paths = write_sensitivity(rows, str(tmp_path / "out"))
  with open(paths["csv"]) as f:
    lines = list(csv.DictReader(f))
  assert len(lines) == len(rows)
  assert float(lines[0]["measured"]) == pytest.approx(rows[0]["measured"])
  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert set(os.listdir(tmp_path / "out")) == {"sensitivity.csv",
                                                "sensitivity.png"}
