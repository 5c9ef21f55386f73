"""A sweep's runs, aggregated and compared: the figures behind its report.

Each function takes the `RunRecord`s of a sweep and the order of its arms:
`aggregate` (mean and std per arm), `compare_paired` (by seed, the verdict's
tests), `compare` (Welch), `overfitting` and its measured
`false_positive_rates`, and `seed_warnings`.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from kqreg.study.sweep import arms as arms_lib
from kqreg.study.sweep import decision as decision_lib
from kqreg.study.sweep import overfitting as overfitting_lib
from kqreg.study.sweep import paired as paired_lib
from kqreg.study.sweep import statistics as stats_lib
from kqreg.study.sweep.records import CLASSIFICATION, RunRecord, SweepTask

__all__ = ["aggregate", "compare", "compare_paired", "compare_unpaired",
           "present_arms", "overfitting",
           "false_positive_rates", "seed_warnings"]


def _mean_std(values: Sequence[Optional[float]]):
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return None, None, 0
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std, len(values)


def aggregate(records: Sequence[RunRecord], bits_order: Sequence[str],
              task: SweepTask = CLASSIFICATION) -> List[Dict]:
  """Per bit setting (in `bits_order`): mean/std of every `task.metrics` key."""
  rows = []
  for bits in bits_order:
    runs = [r for r in records if r.bits == bits]
    if not runs:
      continue
    row = {"bits": bits, "seeds": len(runs)}
    for key in [k for k, _ in task.metrics] + ["val_loss_rise_noise"]:
      mean, std, _ = _mean_std([r.value(key) for r in runs])
      row[f"{key}_mean"], row[f"{key}_std"] = mean, std
    rows.append(row)
  return rows


def present_arms(records: Sequence[RunRecord],
                 bits_order: Sequence[str]) -> List[str]:
  """The arms of `bits_order` that have at least one run, in that order.

  Example:
  >>> present_arms([RunRecord("w4", 0, {}, [])], ["fp", "w8", "w4"])
  ['w4']
  """
  have = {r.bits for r in records}
  return [b for b in bits_order if b in have]


def compare(records: Sequence[RunRecord], bits_order: Sequence[str],
            task: SweepTask = CLASSIFICATION,
            reference: str = arms_lib.REFERENCE,
            alpha: float = stats_lib.ALPHA
           ) -> List[stats_lib.Comparison]:
  """Every arm against `reference` and every noise twin against its arm.

  Per metric of `task.compared` one `statistics.compare_arms` call (Welch,
  Holm over that metric's pairs, MDD); metric-major order.
  """
  arms = present_arms(records, bits_order)
  pairs = arms_lib.comparison_pairs(arms, reference)
  out = []
  for key, _ in task.compared:
    values = {arm: [r.value(key) for r in records if r.bits == arm]
              for arm in arms}
    out += stats_lib.compare_arms(values, pairs, key, alpha)
  return out


def compare_paired(records: Sequence[RunRecord], bits_order: Sequence[str],
                   task: SweepTask = CLASSIFICATION,
                   reference: str = arms_lib.REFERENCE,
                   alpha: float = stats_lib.ALPHA,
                   margins: Optional[Dict[str, float]] = None
                  ) -> List[paired_lib.PairedComparison]:
  """Every arm against `reference` and every twin against its arm, by seed.

  Per metric of `task.compared` one Holm family (`decision.
  paired_comparisons`): paired t, sign-flip check, pairs' correlation,
  Holm-compatible intervals, TOST within `margins[metric]`, the reading.
  """
  return decision_lib.paired_comparisons(
      records, present_arms(records, bits_order), task.compared, reference,
      margins, alpha)


def compare_unpaired(records: Sequence[RunRecord], bits_order: Sequence[str],
                     task: SweepTask, reference: str, alpha: float
                    ) -> List[stats_lib.Comparison]:
  """Welch comparisons of the pairs whose arms share fewer than 2 seeds."""
  arms = present_arms(records, bits_order)
  pairs = decision_lib.unpaired_pairs(
      records, arms_lib.comparison_pairs(arms, reference))
  out = []
  for key, _ in task.compared if pairs else ():
    values = {arm: [r.value(key) for r in records if r.bits == arm]
              for arm in arms}
    out += stats_lib.compare_arms(values, pairs, key, alpha)
  return out


def false_positive_rates(
    records: Sequence[RunRecord],
    overfit: Dict[str, overfitting_lib.ArmOverfitting],
    alpha: float = stats_lib.ALPHA,
    draws: int = overfitting_lib.CALIBRATION_DRAWS) -> Dict[str, float]:
  """Per arm: the measured false-positive rate of its overfitting test.

  At the arm's estimated ρ, its (median) number of epochs and its seeds
  (`overfitting.false_positive_rate`, flat null curves).
  """
  out = {}
  for arm, v in overfit.items():
    lengths = [sum(math.isfinite(x) for x in r.curve("val_loss"))
               for r in records if r.bits == arm]
    epochs = int(np.median(lengths)) if lengths else 0
    if epochs >= 6 and draws > 0:
      rho = v.rho_estimate if math.isfinite(v.rho_estimate) else v.rho
      out[arm] = overfitting_lib.false_positive_rate(
          epochs, v.seeds, round(rho, 2), "flat", alpha, draws)
  return out


def overfitting(records: Sequence[RunRecord], bits_order: Sequence[str],
                alpha: float = stats_lib.ALPHA
               ) -> Dict[str, overfitting_lib.ArmOverfitting]:
  """Per arm, the overfitting verdict from all its seeds' validation loss."""
  curves = {arm: [r.curve("val_loss") for r in records if r.bits == arm]
            for arm in present_arms(records, bits_order)}
  return overfitting_lib.overfitting_verdict(curves, alpha)


def seed_warnings(records: Sequence[RunRecord], bits_order: Sequence[str],
                  minimum: int = stats_lib.RECOMMENDED_SEEDS) -> List[str]:
  """Warnings for arms run with fewer than `minimum` seeds."""
  counts = {arm: sum(r.bits == arm for r in records)
            for arm in present_arms(records, bits_order)}
  few = {arm: n for arm, n in counts.items() if n < minimum}
  if not few:
    return []
  listed = ", ".join(f"{arm} ({n})" for arm, n in few.items())
  lines = [f"Warning: fewer than {minimum} seeds for {listed}: the tests "
           "can only detect large differences (expect inconclusive "
           "readings)."]
  if any(n < 2 for n in few.values()):
    lines.append("Warning: an arm with one seed has no spread; its "
                 "comparisons are not tested.")
  return lines
