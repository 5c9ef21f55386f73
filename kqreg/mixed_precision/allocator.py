"""Mixed precision under a size budget: sensitivity rows -> a `BitPolicy`.

`allocate(model, data, "0.15x", base="w8a8,first=w8a8,last=w8a8")` picks one
weight bit-width per free layer from `choices` so that the summed per-layer
cost is smallest while the kernels fit the budget, and returns the policy as
a flag-ready string: the most common choice as the default token, the other
layers as `name=w<b>` overrides, the base's pins, skips and activation bits
kept.

Why noise is the default objective, what the budget units count and how the
solver stays exact: `docs/design.md`, "Mixed precision".
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg.qat import policy as policy_lib
from kqreg.qat import grid
from kqreg.mixed_precision.budget import (FLOAT32_BYTES, Budget, BudgetError,
                                          parse_budget)
from kqreg.mixed_precision.knapsack import solve
from kqreg.mixed_precision.layer_sensitivity import sensitivity, split_data
from kqreg.mixed_precision.quantizable import (QuantizableLayer, quantizable_layers,
                               stored_bytes)

__all__ = [
    "DEFAULT_CHOICES",
    "OBJECTIVES",
    "Allocation",
    "allocation",
    "allocate",
]

DEFAULT_CHOICES = (2, 3, 4, 8)
OBJECTIVES = ("noise", "loss")


# ----------------------------------------------------------------------------
# Allocation.


@dataclasses.dataclass(frozen=True)
class Allocation:
  """What `allocation` chose, with the figures to record.

  Attributes:
    policy: the `BitPolicy`; `str(policy)` is flag-ready.
    bits: counted layer -> weight bits (pinned layers included).
    pinned: layers whose bits the base policy fixed.
    params: counted layer -> kernel elements.
    int4: <= 4-bit kernels are stored as INT4 (some activation quantized).
    weight_bytes: stored kernel bytes of all counted layers.
    mean_bits: parameter-weighted mean weight bits of the counted layers.
    float32_bytes: their kernels' float32 bytes.
    cost: the objective summed over the free layers.
    objective: "noise" or "loss".
    budget: the parsed budget.
    exact: the solver's choice is optimal (see `solve`).

  Example:
  >>> import kqreg, tf_keras, numpy as np
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
  ...     tf_keras.layers.Dense(8, name="a"), tf_keras.layers.Dense(2, name="b")])
  >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
  >>> result = kqreg.mixed_precision.allocation(model, x, "2", choices=(2, 8))
  >>> str(result.policy), result.mean_bits, result.weight_bytes, result.exact
  ('w2', 2.0, 48, True)
  """
  policy: policy_lib.BitPolicy
  bits: Dict[str, int]
  pinned: Tuple[str, ...]
  params: Dict[str, int]
  int4: bool
  weight_bytes: int
  mean_bits: float
  float32_bytes: int
  cost: float
  objective: str
  budget: Budget
  exact: bool

  def summary(self) -> Dict[str, Any]:
    """The figures as plain JSON-ready values (e.g. an allocation.json)."""
    return {
        "policy": str(self.policy),
        "budget": str(self.budget),
        "budget_kind": self.budget.kind,
        "mean_bits": self.mean_bits,
        "weight_bytes": self.weight_bytes,
        "float32_bytes": self.float32_bytes,
        "ratio_to_float32": self.weight_bytes / self.float32_bytes,
        "storage_int4": self.int4,
        "objective": self.objective,
        "cost": self.cost,
        "exact": self.exact,
        "bits": dict(self.bits),
        "pinned": list(self.pinned),
    }


def _allowed(layer: QuantizableLayer,
             choices: Sequence[int]) -> List[int]:
  # TFLite's TRANSPOSE_CONV takes no <= 4-bit kernels (export refuses them).
  if layer.layer_type == "Conv2DTranspose":
    return [b for b in choices if b >= 5] or [8]
  return list(choices)


def _cost(row: Dict[str, Any], objective: str) -> float:
  if objective == "noise":
    value = row["measured"]
    return float(value) ** 2 if value is not None else math.nan
  value = row.get("loss_increase")
  if value is None:
    raise ValueError(
        f"objective='loss' needs `loss_increase` in the rows, but layer "
        f"{row['layer']!r} at w{row['bits']} has none: pass data with labels "
        "(x, y) and a compiled model, or use objective='noise'.")
  return float(value)


def _output_policy(base: policy_lib.BitPolicy, free_bits: Dict[str, int],
                   forced: Dict[str, int]) -> policy_lib.BitPolicy:
  """`base` with its default at the most common free choice, the other free
  (and forced) layers as exact-name overrides, which outrank all but
  `skip`."""
  default = base.default

  def token(bits: int) -> policy_lib.Bits:
    return policy_lib.Bits(bits, default.activation, default.noise)

  top = default.weight
  if free_bits:
    counts = collections.Counter(free_bits.values())
    top = max(counts, key=lambda b: (counts[b], b))
  names = base.names + tuple(
      (name, token(b)) for name, b in {**free_bits, **forced}.items()
      if b != top)
  return dataclasses.replace(base, default=token(top), names=names)


def allocation(model: tf_keras.Model,
               data,
               budget: Union[str, float, Budget],
               *,
               choices: Sequence[int] = DEFAULT_CHOICES,
               base: Union[None, str, policy_lib.BitPolicy] = None,
               objective: str = "noise",
               rows: Optional[Sequence[Dict[str, Any]]] = None) -> Allocation:
  """`allocate`, returning the whole `Allocation` (policy, bits, bytes).

  Example:
  >>> import kqreg, tf_keras, numpy as np
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
  ...     tf_keras.layers.Dense(8, name="a"), tf_keras.layers.Dense(2, name="b")])
  >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
  >>> result = kqreg.mixed_precision.allocation(model, x, "0.5x", choices=(2, 8))
  >>> type(result).__name__, sorted(result.bits), result.float32_bytes
  ('Allocation', ['a', 'b'], 192)
  """
  budget = parse_budget(budget)
  if objective not in OBJECTIVES:
    raise ValueError(f"`objective` must be one of {OBJECTIVES}. Received: "
                     f"objective={objective!r}")
  choices = sorted({grid.check_bits(b, grid.WEIGHT_BITS,
                                          "choices") for b in choices})
  if not choices:
    raise ValueError("`choices` must name at least one bit-width in 2..8.")
  base = policy_lib.BitPolicy.parse(base or "w8")
  if base.default.weight is None:
    # `fp` or `a8` as a base: its default reaches the free layers all the
    # same, and the allocation gives them their weight bits.
    base = dataclasses.replace(
        base, default=policy_lib.Bits(8, base.default.activation))
  layers, int4 = quantizable_layers(model, base)
  if not layers:
    raise ValueError(f"Policy {str(base)!r} leaves no layer of "
                     f"{model.name!r} to quantize: nothing to allocate.")
  params = {l.name: l.params for l in layers}
  total_params = sum(params.values())

  def weight(layer, bits: int) -> int:
    if budget.kind == "bits":
      return bits * layer.params
    return stored_bytes(layer.params, bits, int4)

  fixed_bits = {l.name: l.bits.weight for l in layers if l.pinned}
  options = {l.name: _allowed(l, choices) for l in layers if not l.pinned}
  # A free layer left one bit-width outside `choices` (a transposed conv
  # with only <= 4-bit choices) gets it by an override, outside the solver.
  forced = {name: b[0] for name, b in options.items()
            if len(b) == 1 and b[0] not in choices}
  free = [l for l in layers if l.name in options and l.name not in forced]
  fixed = sum(weight(l, fixed_bits.get(l.name, forced.get(l.name)))
              for l in layers if l.name in fixed_bits or l.name in forced)
  capacity = budget.capacity(total_params)
  lightest = fixed + sum(min(weight(l, b) for b in options[l.name])
                         for l in free)
  if lightest > capacity:
    smallest = budget.format(budget.express(lightest, total_params),
                             round_up=True)
    storage = ("" if budget.kind == "bits" else
               ", INT4 storage at <= 4 bits" if int4 else
               ", INT8 storage at every bit-width (weight-only base)")
    pinned = {**fixed_bits, **forced}
    pins = (f", pinned {', '.join(f'{n}=w{b}' for n, b in pinned.items())}"
            if pinned else "")
    raise BudgetError(
        f"Budget {budget} is below the smallest achievable {smallest} "
        f"(every free layer at its fewest bits of {tuple(choices)}{pins}"
        f"{storage}); raise the budget.")
  if rows is None and free:
    if data is None:
      raise ValueError("Pass `data` (a calibration batch) or `rows` "
                       "(sensitivity rows) to allocate.")
    if objective == "noise":
      data = split_data(model, data)[0]  # labels unneeded
    rows = sensitivity(model, data, bits=choices, base=base)
  table = {(r["layer"], int(r["bits"])): r for r in rows or ()}
  costs, weights = [], []
  for l in free:
    layer_costs = []
    for b in options[l.name]:
      row = table.get((l.name, b))
      if row is None:
        raise ValueError(
            f"The sensitivity rows have no row for layer {l.name!r} at w{b}: "
            f"compute them with bits={tuple(choices)} and the same base.")
      cost = _cost(row, objective)
      if not math.isfinite(cost):
        raise ValueError(f"Layer {l.name!r} at w{b} has no finite "
                         f"{objective} cost ({cost}): its output is zero on "
                         "the calibration batch?")
      layer_costs.append(cost)
    costs.append(layer_costs)
    weights.append([weight(l, b) for b in options[l.name]])
  chosen, exact = solve(costs, weights, capacity - fixed)
  free_bits = {l.name: options[l.name][j] for l, j in zip(free, chosen)}
  policy = _output_policy(base, free_bits, forced)
  bits = {l.name: free_bits.get(l.name, fixed_bits.get(l.name,
                                                       forced.get(l.name)))
          for l in layers}
  # The string must give every layer the chosen bits when resolved again.
  resolved = {l.name: l.bits.weight
              for l in quantizable_layers(model, policy)[0]}
  if resolved != bits:
    raise AssertionError(f"kqreg bug: policy {str(policy)!r} resolves to "
                         f"{resolved}, not the chosen {bits}.")
  stored = sum(stored_bytes(params[n], b, int4)
               for n, b in bits.items())
  return Allocation(
      policy=policy, bits=bits, pinned=tuple(fixed_bits) + tuple(forced),
      params=params,
      int4=int4, weight_bytes=stored,
      mean_bits=sum(b * params[n] for n, b in bits.items()) / total_params,
      float32_bytes=FLOAT32_BYTES * total_params,
      cost=float(sum(c[j] for c, j in zip(costs, chosen))),
      objective=objective, budget=budget, exact=exact)


def allocate(model: tf_keras.Model,
             data,
             budget: Union[str, float, Budget],
             *,
             choices: Sequence[int] = DEFAULT_CHOICES,
             base: Union[None, str, policy_lib.BitPolicy] = None,
             objective: str = "noise",
             rows: Optional[Sequence[Dict[str, Any]]] = None
             ) -> policy_lib.BitPolicy:
  """Chooses per-layer weight bits under a size budget; returns the policy.

  Minimizes the summed cost of the free layers (objective "noise": the
  squared output perturbation `measured`²; "loss": `loss_increase`) within
  the budget, by `solve`. Units, bytes counted and the solver: see the
  module docstring.

  Args:
    model: a float model (or a QAT model from `kqreg.quantize`; then rows
      and names are its quantized layers').
    data: the calibration batch for `sensitivity` (x, or (x, y) for
      objective "loss"); unused when `rows` are given.
    budget: see `parse_budget`: mean weight bits (`4`, `"3.5"`), a fraction
      of the float32 kernel bytes (`"0.15x"`) or kernel bytes (`"120KiB"`,
      `"64KB"`, `"2000B"`).
    choices: the bit-widths a free layer may get (2..8).
    base: the policy the allocation starts from. Its `skip` layers stay
      float and are not counted; its overrides (`first=`, `last=`, names,
      globs, classes) pin layers, whose bytes count in the budget; its
      default token gives every free layer's activation bits (and `n`, for a
      noise twin), its weight bits are ignored. None means "w8":
      weight-only, whose export stores every kernel as INT8, so a byte
      budget there cannot go below 0.25x; pass e.g. "w8a8" for INT4
      storage of <= 4-bit kernels.
    objective: "noise" (default) or "loss" (needs rows with
      `loss_increase`).
    rows: precomputed `sensitivity` rows covering the free layers at
      `choices`.

  Returns:
    The `BitPolicy`: the base with its default token at the most common
    choice and `name=w<b>` overrides for the other free layers.

  Raises:
    ValueError: a bad budget, objective or choices; rows missing a layer;
      or a budget below the smallest achievable, stated in the budget's own
      unit (one line).

  Example:
  >>> import kqreg, tf_keras, numpy as np
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
  ...     tf_keras.layers.Dense(8, name="a"), tf_keras.layers.Dense(2, name="b")])
  >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
  >>> policy = kqreg.allocate(model, x, "2", base="w8a8")
  >>> str(policy)
  'w2a8'
  >>> kqreg.qat.is_quantized(kqreg.quantize(model, policy))
  True
  """
  return allocation(model, data, budget, choices=choices, base=base,
                    objective=objective, rows=rows).policy
