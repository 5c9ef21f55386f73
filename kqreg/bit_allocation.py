"""Mixed precision under a size budget: sensitivity rows -> a `BitPolicy`.

`allocate(model, data, "0.15x", base="w8a8,first=w8a8,last=w8a8")` picks one
weight bit-width per free layer from `choices` so that the summed per-layer
cost is smallest while the kernels fit the budget, and returns the policy as
a flag-ready string: the most common choice as the default token, the other
layers as `name=w<b>` overrides, the base's pins, skips and activation bits
kept.

Decisions, stated once:

* **Objective.** The default, "noise", is each layer's measured output
  perturbation squared (`sensitivity` row `measured`², one layer at b bits,
  the rest float). Under the additive model the layers' weight noises are
  independent and zero-mean, so at the output they add in variance: the
  sum over layers predicts the squared relative output perturbation of the
  mixed model. It needs no labels and is well measured on a small batch;
  the loss increase ("loss") is second order in the perturbation near a
  trained minimum, so on one calibration batch it is small, noisy and often
  negative, and on an untrained model it says little.
* **Budget units** (`parse_budget`): a number is the mean weight bits over
  the counted kernels, parameter-weighted (nominal bits: b · params); "0.15x"
  is a fraction of the counted kernels' float32 bytes; "120KiB", "64KB",
  "2000B" are total kernel bytes. Bytes are those of kqreg's .tflite export
  (`quantizable.stored_bytes`): kernel data only, INT4 (two per byte) for
  <= 4-bit kernels when some activation is quantized, else INT8; scales,
  zero points and biases are not counted. Counted kernels: every quantized
  layer, pinned ones included; layers the base skips stay float and are not
  counted.
* **Solver** (`solve`): a multiple-choice knapsack by dynamic programming
  over the budget axis in integer units (bits · params, or bytes), after
  subtracting each layer's lightest choice and dividing by the common
  divisor of what is left: exact whenever layers × (slack / divisor + 1) <=
  `DP_MAX_CELLS` (2·10⁷, 20 MB of back-pointers). Beyond that the axis is
  coarsened to `DP_MAX_CELLS / layers` cells with weights rounded up (so the
  result is always within budget), then a greedy pass spends what the
  rounding left on the best cost reductions per unit.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tf_keras

from kqreg import policy as policy_lib
from kqreg import quantizers
from kqreg.budget import (BUDGET_SPELLINGS, FLOAT32_BYTES, Budget,
                          parse_budget)
from kqreg.layer_sensitivity import sensitivity, split_data
from kqreg.quantizable import (QuantizableLayer, quantizable_layers,
                               stored_bytes)

__all__ = [
    "DEFAULT_CHOICES",
    "OBJECTIVES",
    "DP_MAX_CELLS",
    "BUDGET_SPELLINGS",
    "Budget",
    "parse_budget",
    "solve",
    "Allocation",
    "allocation",
    "allocate",
]

DEFAULT_CHOICES = (2, 3, 4, 8)
OBJECTIVES = ("noise", "loss")
DP_MAX_CELLS = 20_000_000
# ----------------------------------------------------------------------------
# The solver.


def _dp(costs: Sequence[Sequence[float]], weights: Sequence[Sequence[int]],
        capacity: int) -> List[int]:
  """Min Σ cost with Σ weight <= capacity; each layer has a 0-weight choice."""
  best = np.zeros(capacity + 1)  # best[c]: layers so far within c
  picks = np.zeros((len(costs), capacity + 1), np.uint8)
  for i, (layer_costs, layer_weights) in enumerate(zip(costs, weights)):
    new = np.full(capacity + 1, np.inf)
    for j, (cost, weight) in enumerate(zip(layer_costs, layer_weights)):
      if weight > capacity:
        continue
      candidate = np.full(capacity + 1, np.inf)
      candidate[weight:] = best[:capacity + 1 - weight] + cost
      better = candidate < new
      new[better] = candidate[better]
      picks[i, better] = j
    best = new
  chosen, room = [0] * len(costs), capacity
  for i in reversed(range(len(costs))):
    chosen[i] = int(picks[i, room])
    room -= weights[i][chosen[i]]
  return chosen


def _spend_leftover(costs, weights, capacity: int, chosen: List[int]
                    ) -> List[int]:
  """Greedy: take the best cost reduction per added unit while it fits."""
  chosen = list(chosen)
  used = sum(w[j] for w, j in zip(weights, chosen))
  while True:
    best_move, best_rate = None, 0.0
    for i, (layer_costs, layer_weights) in enumerate(zip(costs, weights)):
      for j in range(len(layer_costs)):
        gain = layer_costs[chosen[i]] - layer_costs[j]
        added = layer_weights[j] - layer_weights[chosen[i]]
        if gain <= 0 or used + added > capacity:
          continue
        rate = math.inf if added <= 0 else gain / added
        if rate > best_rate:
          best_move, best_rate = (i, j, added), rate
    if best_move is None:
      return chosen
    i, j, added = best_move
    chosen[i], used = j, used + added


def solve(costs: Sequence[Sequence[float]],
          weights: Sequence[Sequence[int]],
          capacity: int,
          *,
          max_cells: int = DP_MAX_CELLS) -> Tuple[List[int], bool]:
  """Multiple-choice knapsack: one choice per layer, least Σ cost within
  `capacity`.

  Args:
    costs: costs[i][j], the cost of choice j for layer i (finite).
    weights: weights[i][j], its non-negative integer size.
    capacity: the largest allowed Σ weights.
    max_cells: layers × budget cells above which the axis is coarsened (see
      the module docstring).

  Returns:
    (chosen[i] = j for each layer, exact): `exact` is True when the dynamic
    program ran on the integer axis itself, so the choice is optimal.

  Raises:
    ValueError: no choice fits (Σ of each layer's lightest > capacity), or
      the inputs disagree in shape.
  """
  if len(costs) != len(weights) or any(
      len(c) != len(w) or not c for c, w in zip(costs, weights)):
    raise ValueError("`costs` and `weights` need one non-empty list of "
                     "choices per layer, of equal lengths.")
  if not costs:
    return [], True
  lightest = [min(w) for w in weights]
  slack = int(capacity) - sum(lightest)
  if slack < 0:
    raise ValueError(f"Nothing fits: the lightest choices need "
                     f"{sum(lightest)} > capacity {capacity}.")
  extra = [[int(w) - low for w in ws] for ws, low in zip(weights, lightest)]
  # Every total is a multiple of the common divisor: dividing by it is exact.
  unit = math.gcd(*[e for es in extra for e in es]) or 1
  exact = (slack // unit + 1) * len(costs) <= max_cells
  if not exact:
    unit = max(unit, -(-slack // max(max_cells // len(costs) - 1, 1)))
  # Rounded up, so whatever fits the coarse axis fits the true one.
  scaled = [[-(-e // unit) for e in es] for es in extra]
  chosen = _dp(costs, scaled, slack // unit)
  if not exact:
    chosen = _spend_leftover(costs, extra, slack, chosen)
  return chosen, exact


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
  """`allocate`, returning the whole `Allocation` (policy, bits, bytes)."""
  budget = parse_budget(budget)
  if objective not in OBJECTIVES:
    raise ValueError(f"`objective` must be one of {OBJECTIVES}. Received: "
                     f"objective={objective!r}")
  choices = sorted({quantizers.check_bits(b, quantizers.WEIGHT_BITS,
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
    raise ValueError(
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

  Minimizes Σ over free layers of the layer's cost at its bits (objective
  "noise": `measured`², the squared relative output perturbation with that
  layer alone quantized, which adds over layers in variance under the
  additive model; "loss": `loss_increase`) subject to the budget, by the
  exact dynamic program of `solve`. See the module docstring for units,
  bytes counted and the solver's resolution.

  Example:

  ```python
  policy = kqreg.allocate(model, x_calib, "0.15x", base="w8a8,last=w8a8")
  qat = kqreg.quantize(model, policy)
  print(policy)   # e.g. "w2a8,last=w8a8,conv_1=w4a8,conv_2=w3a8"
  ```

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
  """
  return allocation(model, data, budget, choices=choices, base=base,
                    objective=objective, rows=rows).policy
