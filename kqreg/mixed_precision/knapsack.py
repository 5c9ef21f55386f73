"""The multiple-choice knapsack behind `allocate`: one choice per layer, least cost.

Pure Python and NumPy: no TensorFlow, no Keras. Exact by dynamic programming
over the budget axis in integer units while layers × cells <= `DP_MAX_CELLS`;
beyond that the axis is coarsened with weights rounded up (always within
budget), then a greedy pass spends what the rounding left.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["DP_MAX_CELLS", "solve"]


DP_MAX_CELLS = 20_000_000


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

  Example:
  >>> import kqreg
  >>> costs = [[4.0, 1.0], [9.0, 2.0]]   # layer i, choice j (say 2 or 8 bits)
  >>> weights = [[2, 8], [2, 8]]
  >>> kqreg.mixed_precision.solve(costs, weights, capacity=10)
  ([0, 1], True)
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
