"""Seed-paired statistics of a sweep: does quantizing the weights regularize?

Every arm of a sweep (`fp`, `w8`, `w4`, `n4`, `fp` + weight decay, ...) is
trained with the same seeds, and seed s fixes the initialization and the data
order of every arm. Seed s of two arms is therefore a pair: the run-to-run
spread they share (a lucky initialization, an easy shuffle) cancels in their
difference, and a paired test sees differences that Welch's two-sample test
(`statistics.welch_test`) loses in that shared spread. Pairing is by seed,
never by position.

For each (arm, reference) pair of one metric `compare_paired` reports (the
tests of one pair are in `paired_tests`):

* the paired t-test (`paired_t_test`), Holm-corrected over the family of
  pairs, with simultaneous intervals that agree with Holm's decisions
  (`holm_intervals`);
* an exact sign-flip permutation test (`sign_flip_test`), which needs no
  normality, as a check on the t-test's p;
* an equivalence test (`tost`) within ±margin, so that "no difference" can
  be told apart from "not enough seeds";
* the four-way `reading` of the two tests together;
* the correlation of the pairs, which says how much the pairing bought.

Whether the effect grows with the weight noise std(δ) of the arms is the
dose-response question, answered in `dose_response`.

Plain NumPy/SciPy and the standard library (and `paired_tests`; no
TensorFlow), so it runs anywhere the per-seed numbers are.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from kqreg.study.sweep.paired_tests import (ALPHA, ArrayOrInt, as_scalar,
                                           is_finite, paired_t_test,
                                           sign_flip_test, tost)

__all__ = [
    "HolmIntervals", "holm_intervals",
    "DIFFERS_HIGHER", "DIFFERS_LOWER", "EQUIVALENT", "INCONCLUSIVE",
    "DIFFERS_WITHIN", "reading",
    "PairedComparison", "compare_paired",
]


# The readings of `reading`; the equivalence ones name the margin.
DIFFERS_HIGHER = "differs (higher)"
DIFFERS_LOWER = "differs (lower)"
EQUIVALENT = "equivalent within ±{margin:g}"
DIFFERS_WITHIN = "differs but within ±{margin:g}"
INCONCLUSIVE = "inconclusive"


# --------------------------------------------------------------------------
# Paired t-test
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Sign-flip permutation test
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Equivalence: two one-sided tests
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Holm's correction with compatible simultaneous intervals
# --------------------------------------------------------------------------


def _holm_rows(p: np.ndarray) -> np.ndarray:
  """`statistics.holm` along the last axis (NaNs stay NaN, not counted)."""
  p = np.asarray(p, np.float64)
  order = np.argsort(p, axis=-1, kind="stable")  # NaNs sort last
  ordered = np.take_along_axis(p, order, axis=-1)
  m = np.isfinite(p).sum(axis=-1, keepdims=True)
  scaled = (m - np.arange(p.shape[-1])) * ordered
  adjusted = np.minimum(1.0, np.maximum.accumulate(scaled, axis=-1))
  out = np.empty_like(p)
  np.put_along_axis(out, order, adjusted, axis=-1)
  return np.where(np.isfinite(p), out, np.nan)


@dataclasses.dataclass(frozen=True)
class HolmIntervals:
  """Holm's decisions over a family and intervals that agree with them.

  Fields are arrays over the family (last axis); leading axes are
  independent families.

  Attributes:
    low, high: the simultaneous 1 − alpha intervals (NaN outside the family).
    p: the two-sided t-test p-values.
    p_holm: Holm-adjusted p-values.
    rejected: p_holm ≤ alpha.
    family: comparisons with a p-value (m).
    alpha: the family-wise level.
  """
  low: np.ndarray
  high: np.ndarray
  p: np.ndarray
  p_holm: np.ndarray
  rejected: np.ndarray
  family: ArrayOrInt
  alpha: float


def holm_intervals(diff, se, df, alpha: float = ALPHA) -> HolmIntervals:
  """Holm's step-down test over a family of t-tests and compatible intervals.

  Holm rejects more than Bonferroni, so Bonferroni's α/m intervals can cover
  0 where Holm rejects; these intervals never contradict a decision.
  Construction (Strassburger & Bretz 2008, Holm-compatible bounds, applied
  to the 2m one-sided hypotheses Δ_i ≤ 0 and Δ_i ≥ 0): with r two-sided
  Holm rejections among m comparisons and c_i = t_{1 − α/(2m − r), df_i},

  * not rejected: Δ̂_i ± c_i·se_i (two-sided level 2α/(2m − r));
  * rejected with Δ̂_i > 0: [0, Δ̂_i + c_i·se_i]; with Δ̂_i < 0 the mirror
    [Δ̂_i − c_i·se_i, 0].

  Simultaneous coverage ≥ 1 − α under any dependence (the arms share the
  reference runs): let J be the one-sided hypotheses that are true (≥ m of
  them) and B the event that each one's pivot stays below its one-sided
  α/|J| quantile; P(B) ≥ 1 − α by Bonferroni. On B no p of J is below
  α/|J|, so Holm rejects none of J, hence 2m − r ≥ |J| and c_i is at least
  the α/|J| quantile: every bound from J holds. A rejected side is false
  on B, so its true Δ lies beyond its bound 0. A side neither rejected nor
  in J is false too (its true Δ is beyond 0), and its bound lies on the
  other side of 0, since p_i > α/(m − r) ≥ 2α/(2m − r) (below).
  With r = 0 they are Bonferroni's α/m intervals; with r > 0 the others
  narrow. The price: a rejected comparison's interval stops at 0 and says
  nothing about how far from 0 its difference is.

  Compatibility, exactly: Holm rejects ⇔ the interval lies on one side of 0
  with 0 as an endpoint (on the side of Δ̂_i); not rejected ⇔ low < 0 <
  high, because the non-rejected have p > α/(m − r) ≥ 2α/(2m − r).

  Args:
    diff, se, df: per-comparison estimates, standard errors and degrees of
      freedom along the last axis. Comparisons with a non-finite or zero se
      have no p-value and are left out of the family (NaN intervals).
    alpha: family-wise level.

  Returns:
    A `HolmIntervals`.

  Example:
    >>> h = holm_intervals([0.5, 0.3, 0.05], [0.1, 0.1, 0.1], [9, 9, 9])
    >>> h.rejected.tolist(), round(float(h.p[1]), 4)
    ([True, True, False], 0.015)
    >>> [(round(float(a), 3), round(float(b), 3))
    ...  for a, b in zip(h.low, h.high)]
    [(0.0, 0.769), (0.0, 0.569), (-0.219, 0.319)]
  """
  diff = np.asarray(diff, np.float64)
  se = np.asarray(se, np.float64)
  df = np.asarray(df, np.float64)
  diff, se, df = np.broadcast_arrays(diff, se, df)
  with np.errstate(divide="ignore", invalid="ignore"):
    t = np.where(se > 0, diff / se, np.nan)
    p = 2 * stats.t.sf(np.abs(t), df)
  p_holm = _holm_rows(p)
  rejected = np.asarray(p_holm <= alpha)
  m = np.isfinite(p).sum(axis=-1, keepdims=True)
  r = rejected.sum(axis=-1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    c = stats.t.ppf(1 - alpha / np.maximum(2 * m - r, 1), df)
  low, high = diff - c * se, diff + c * se
  low = np.where(rejected & (diff > 0), 0.0, low)
  high = np.where(rejected & (diff < 0), 0.0, high)
  inside = np.isfinite(p)
  return HolmIntervals(np.where(inside, low, np.nan),
                       np.where(inside, high, np.nan), p, p_holm, rejected,
                       as_scalar(m[..., 0]), alpha)


# --------------------------------------------------------------------------
# Four-way reading and the per-metric family
# --------------------------------------------------------------------------


def reading(diff: float, p_holm: float, p_tost: Optional[float],
            margin: Optional[float], alpha: float = ALPHA) -> str:
  """What a comparison says: differs, equivalent, both, or neither.

  A difference test alone cannot tell "no effect" from "too few seeds";
  an equivalence test alone cannot tell "no effect" from "an effect too
  small to matter". Together, at level alpha:

  * Holm-corrected paired test rejects, TOST does not: `DIFFERS_HIGHER` or
    `DIFFERS_LOWER` (sign of diff = arm − reference);
  * TOST finds |Δ| < margin, the paired test does not reject: `EQUIVALENT`;
  * both: `DIFFERS_WITHIN`, a real but practically negligible difference;
  * neither: `INCONCLUSIVE`, more seeds needed.

  Without a margin (None) equivalence is never claimed. TOST is per
  comparison, not Holm-corrected: it is the claim "no difference beyond
  ±margin" that each reading makes on its own.

  Example:
    >>> reading(0.03, p_holm=0.001, p_tost=0.2, margin=0.01)
    'differs (higher)'
    >>> reading(0.001, p_holm=0.6, p_tost=0.004, margin=0.01)
    'equivalent within ±0.01'
    >>> reading(0.004, p_holm=0.01, p_tost=0.01, margin=0.01)
    'differs but within ±0.01'
    >>> reading(-0.01, p_holm=0.3, p_tost=0.4, margin=0.01)
    'inconclusive'
  """
  differs = p_holm is not None and p_holm <= alpha  # False for NaN
  equivalent = (margin is not None and p_tost is not None and
                p_tost <= alpha)
  if differs and equivalent:
    return DIFFERS_WITHIN.format(margin=margin)
  if differs:
    return DIFFERS_HIGHER if diff > 0 else DIFFERS_LOWER
  if equivalent:
    return EQUIVALENT.format(margin=margin)
  return INCONCLUSIVE


@dataclasses.dataclass(frozen=True)
class PairedComparison:
  """One arm against its reference in one metric, paired by seed.

  Attributes:
    arm, reference: the two settings; diff = mean over seeds of
      arm − reference.
    metric: the metric's key.
    n: seeds paired (both values finite).
    seeds: those seeds.
    dropped: (seed, reason) for each seed that could not be paired.
    diff: the mean paired difference.
    sd: the sample sd of the paired differences.
    df: n − 1.
    ci_low, ci_high: the Holm-compatible simultaneous interval
      (`holm_intervals`), at family-wise 1 − alpha.
    p: the paired t-test's two-sided p.
    p_holm: p after Holm's correction over the family.
    p_sign_flip: the sign-flip permutation test's p.
    sign_flip_method: "exact" or "monte carlo".
    p_tost: the TOST p for ±margin (NaN without a margin).
    correlation: Pearson's r of the pairs.
    margin: the equivalence margin, or None.
    reading: see `reading`.
    alpha: the level.
    family: comparisons Holm's correction covered.
  """
  arm: str
  reference: str
  metric: str
  n: int
  seeds: Tuple[int, ...]
  dropped: Tuple[Tuple[int, str], ...]
  diff: float
  sd: float
  df: float
  ci_low: float
  ci_high: float
  p: float
  p_holm: float
  p_sign_flip: float
  sign_flip_method: str
  p_tost: float
  correlation: float
  margin: Optional[float]
  reading: str
  alpha: float
  family: int

  def as_dict(self) -> Dict:
    return dataclasses.asdict(self)


def _pair_by_seed(arm_values: Mapping[int, Optional[float]],
                  ref_values: Mapping[int, Optional[float]]
                  ) -> Tuple[List[int], np.ndarray, np.ndarray,
                             List[Tuple[int, str]]]:
  """Seeds with a finite value in both arms, and why the others were not."""
  seeds, x, y, dropped = [], [], [], []
  for seed in sorted(set(arm_values) | set(ref_values)):
    if seed not in arm_values:
      dropped.append((seed, "no run of the arm"))
    elif seed not in ref_values:
      dropped.append((seed, "no run of the reference"))
    elif not is_finite(arm_values[seed]):
      dropped.append((seed, "arm value missing or not finite"))
    elif not is_finite(ref_values[seed]):
      dropped.append((seed, "reference value missing or not finite"))
    else:
      seeds.append(seed)
      x.append(float(arm_values[seed]))
      y.append(float(ref_values[seed]))
  return seeds, np.asarray(x), np.asarray(y), dropped


def compare_paired(values_by_arm: Mapping[str, Mapping[int, Optional[float]]],
                   pairs: Sequence[Tuple[str, str]], metric: str = "",
                   margin: Optional[float] = None,
                   alpha: float = ALPHA) -> List[PairedComparison]:
  """Paired tests per (arm, reference), Holm-corrected over the pairs.

  The pairs of one call are one family (one metric): Holm's correction and
  the compatible intervals (`holm_intervals`) run over the pairs with a
  p-value. Each pair also gets the sign-flip p, the TOST p for ±margin and
  the four-way `reading`.

  Args:
    values_by_arm: arm → {seed: value} of one metric. Seeds, not positions,
      pair the runs; a seed missing or non-finite on either side is dropped
      from that pair, with the reason recorded in `dropped`.
    pairs: (arm, reference) pairs, in report order.
    metric: the metric's key, copied into the results.
    margin: equivalence margin in the metric's units, or None.
    alpha: family-wise level (and TOST's level).

  Returns:
    One `PairedComparison` per pair, in order. A pair with fewer than 2
    seeds, or constant differences, has NaN test figures, reads
    "inconclusive" and is not counted in the family.

  Example:
    >>> values = {"fp": {0: 0.90, 1: 0.92, 2: 0.88, 3: 0.91},
    ...           "w4": {1: 0.94, 0: 0.93, 2: 0.90, 3: 0.92, 4: 0.95}}
    >>> (c,) = compare_paired(values, [("w4", "fp")], "accuracy", margin=0.05)
    >>> c.n, c.dropped, round(c.diff, 4), c.reading
    (4, ((4, 'no run of the reference'),), 0.02, 'differs but within ±0.05')
  """
  raw = []
  for arm, ref in pairs:
    seeds, x, y, dropped = _pair_by_seed(values_by_arm.get(arm, {}),
                                         values_by_arm.get(ref, {}))
    test = paired_t_test(x, y, alpha) if len(seeds) >= 2 else None
    raw.append((arm, ref, seeds, x, y, dropped, test))
  diff = np.array([t.diff if t else math.nan for *_, t in raw])
  se = np.array([t.se if t else math.nan for *_, t in raw])
  df = np.array([t.df if t else math.nan for *_, t in raw])
  holm = holm_intervals(diff, se, df, alpha)
  out = []
  for i, (arm, ref, seeds, x, y, dropped, test) in enumerate(raw):
    flip = sign_flip_test(x, y) if seeds else None
    p_tost = math.nan
    if test is not None and margin is not None:
      p_tost = float(tost(x, y, margin, alpha).p)
    p_holm = float(holm.p_holm[i])
    mean_diff = float(np.mean(x - y)) if seeds else math.nan
    out.append(PairedComparison(
        arm=arm, reference=ref, metric=metric, n=len(seeds),
        seeds=tuple(seeds), dropped=tuple(dropped), diff=mean_diff,
        sd=float(test.sd) if test else math.nan,
        df=float(test.df) if test else math.nan,
        ci_low=float(holm.low[i]), ci_high=float(holm.high[i]),
        p=float(holm.p[i]), p_holm=p_holm,
        p_sign_flip=float(flip.p) if flip else math.nan,
        sign_flip_method=flip.method if flip else "",
        p_tost=p_tost,
        correlation=float(test.correlation) if test else math.nan,
        margin=margin,
        reading=reading(mean_diff, p_holm, p_tost, margin, alpha),
        alpha=alpha, family=int(holm.family)))
  return out


