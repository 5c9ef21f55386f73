"""Statistics of a bit-width sweep: tests, intervals, power, overfitting.

Plain NumPy/SciPy on per-seed numbers; no TensorFlow. A sweep trains every
setting ("arm": `fp`, `w8`, `w4`, `n4`, ...) with several seeds. Two
questions are asked of it, each at level α (`ALPHA` = 0.05 unless given):

1. Does an arm differ from its reference (`fp`, or for a noise twin `n4`
   its quantized arm `w4`) in a metric? `compare_arms`: Welch's two-sample
   t-test per pair (unequal variances, Welch–Satterthwaite degrees of
   freedom), a 1 − α confidence interval for the difference of the means,
   Holm's step-down correction over the pairs of one metric, and the
   minimal detectable difference (`min_detectable_difference`), so that "no
   difference shown" says which differences were ruled out.
2. Does an arm overfit? See `kqreg.study.sweep.overfitting`, which uses `holm`
   and `ALPHA` from here.

Every simulation here uses a fixed seed, so a report is reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import optimize
from scipy import stats

__all__ = [
    "ALPHA", "POWER", "RECOMMENDED_SEEDS", "NULL_DRAWS",
    "WelchTest", "welch_test", "holm", "min_detectable_difference",
    "Comparison", "compare_arms", "mean_interval", "geometric_mean_interval",
]

ALPHA = 0.05
POWER = 0.8
# Below this many seeds per arm the report warns: with 3 seeds Welch's test
# has ~2–4 degrees of freedom, and only differences of several standard
# deviations are detectable.
RECOMMENDED_SEEDS = 5
# Flat-noise curves simulated per (epochs, window) for the overfitting null:
# the Monte Carlo error of its 95% quantile is about ±0.3 percentage points
# of false-positive rate.
NULL_DRAWS = 4000
_NULL_SEED = 2022  # fixed, so the null and every p-value are reproducible

ArrayOrFloat = Union[float, np.ndarray]


def _scalar(a):
  """0-d arrays back to floats; arrays (vectorized calls) unchanged."""
  a = np.asarray(a)
  return float(a) if a.ndim == 0 else a


# --------------------------------------------------------------------------
# Two-sample comparison
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WelchTest:
  """Welch's t-test of mean(x) − mean(y); fields are arrays if vectorized.

  Attributes:
    diff: mean(x) − mean(y).
    se: its standard error √(s_x²/n_x + s_y²/n_y).
    df: Welch–Satterthwaite degrees of freedom.
    t: diff / se.
    p: two-sided p-value (NaN when both samples have no spread).
    ci_low, ci_high: the 1 − alpha confidence interval diff ± t_{1−α/2,df}·se.
    n_x, n_y: sample sizes.
    alpha: the level of the interval.
  """
  diff: ArrayOrFloat
  se: ArrayOrFloat
  df: ArrayOrFloat
  t: ArrayOrFloat
  p: ArrayOrFloat
  ci_low: ArrayOrFloat
  ci_high: ArrayOrFloat
  n_x: int
  n_y: int
  alpha: float


def welch_test(x, y, alpha: float = ALPHA) -> WelchTest:
  """Welch's unequal-variance t-test and confidence interval, x against y.

  t = (x̄ − ȳ) / se, se² = s_x²/n_x + s_y²/n_y (sample variances, ddof 1),
  df = se⁴ / ((s_x²/n_x)²/(n_x − 1) + (s_y²/n_y)²/(n_y − 1)); p is two-sided
  from Student's t with df degrees of freedom; the interval is
  diff ± t_{1−α/2, df}·se. Welch's test does not assume equal variances
  (quantized and float runs need not spread alike). It assumes roughly
  normal per-seed values; with n = 2 it is conservative.

  Args:
    x, y: per-seed values, at least 2 each, along the last axis (leading
      axes are independent tests, for simulation).
    alpha: 1 − alpha is the interval's confidence level.

  Returns:
    A `WelchTest`. When both samples are constant, se = 0: p and df are NaN
    and the interval is the point diff.

  Raises:
    ValueError: fewer than 2 values in x or y.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  n_x, n_y = x.shape[-1], y.shape[-1]
  if n_x < 2 or n_y < 2:
    raise ValueError(f"welch_test needs at least 2 values per sample; got "
                     f"{n_x} and {n_y}.")
  v_x = x.var(axis=-1, ddof=1) / n_x
  v_y = y.var(axis=-1, ddof=1) / n_y
  diff = x.mean(axis=-1) - y.mean(axis=-1)
  # Constant samples leave a rounding-error variance (~1e-33): treat a
  # spread below 1e-12 of the values' scale as none.
  scale = np.maximum(np.abs(x).max(axis=-1), np.abs(y).max(axis=-1))
  se = np.sqrt(v_x + v_y)
  se = np.where(se > 1e-12 * np.maximum(scale, 1e-300), se, 0.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    df = (v_x + v_y)**2 / (v_x**2 / (n_x - 1) + v_y**2 / (n_y - 1))
    t = np.where(se > 0, diff / se, np.nan)
  df = np.where(se > 0, df, np.nan)
  p = 2 * stats.t.sf(np.abs(t), df)
  half = np.where(se > 0, stats.t.ppf(1 - alpha / 2, df) * se, 0.0)
  return WelchTest(_scalar(diff), _scalar(se), _scalar(df), _scalar(t),
                   _scalar(p), _scalar(diff - half), _scalar(diff + half),
                   n_x, n_y, alpha)


def mean_interval(values: Sequence[float], alpha: float = ALPHA
                  ) -> Tuple[float, float, float]:
  """Mean of `values` and its 1 − α t-interval (the mean alone for one value)."""
  values = np.asarray(values, dtype=float)
  mean = float(np.mean(values))
  if len(values) < 2:
    return mean, mean, mean
  half = float(stats.t.ppf(1 - alpha / 2, len(values) - 1) *
               np.std(values, ddof=1) / np.sqrt(len(values)))
  return mean, mean - half, mean + half


def geometric_mean_interval(ratios: Sequence[float], alpha: float = ALPHA
                            ) -> Tuple[float, float, float]:
  """Geometric mean of positive `ratios` and its 1 − α t-interval, taken on
  their logarithms (the geometric mean alone for one ratio)."""
  return tuple(float(np.exp(v))
               for v in mean_interval(np.log(ratios), alpha))


def holm(p_values: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values (NaNs stay NaN, not counted).

  With the m finite p-values sorted, p_(1) ≤ … ≤ p_(m), the adjusted value
  of p_(i) is min(1, max_{j ≤ i} (m − j + 1)·p_(j)); rejecting where it is
  ≤ α keeps the family-wise error rate ≤ α under any dependence between
  the tests (the arms of a sweep share the `fp` runs, so they are
  dependent). The adjusted values are monotone in the raw ones.

  Example: p = (0.01, 0.04, 0.03, 0.005) → (0.03, 0.06, 0.06, 0.02).
  """
  p = np.asarray(p_values, np.float64)
  adjusted = np.full(p.shape, np.nan)
  finite = np.flatnonzero(np.isfinite(p))
  m = len(finite)
  if m:
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
  return adjusted


def min_detectable_difference(sd_x: float, n_x: int, sd_y: float, n_y: int,
                              alpha: float = ALPHA, power: float = POWER,
                              tests: int = 1) -> float:
  """Smallest |mean difference| Welch's test finds with `power`, at α/tests.

  Taking the given standard deviations as the true ones, se and df are
  Welch's (see `welch_test`); the two-sided test at level a = alpha/tests
  rejects when |T| > c = t_{1−a/2, df}, and T follows a noncentral t with
  noncentrality Δ/se. The result is the Δ at which
  P(T > c) + P(T < −c) = power, found by root search. Dividing α by the
  number of tests in the family is Bonferroni's level, the smallest level
  Holm's procedure uses, so the MDD is conservative for Holm.

  The standard deviations are estimated from the same few seeds, so the MDD
  is itself uncertain; it grows as seeds shrink (larger se, fewer df,
  larger c).

  Returns:
    The MDD in the metric's units; NaN with fewer than 2 values per arm or
    a non-finite sd, 0 when both sds are 0.
  """
  if n_x < 2 or n_y < 2 or not (math.isfinite(sd_x) and
                                math.isfinite(sd_y)):
    return math.nan
  v_x, v_y = sd_x**2 / n_x, sd_y**2 / n_y
  se = math.sqrt(v_x + v_y)
  if se == 0:
    return 0.0
  df = (v_x + v_y)**2 / (v_x**2 / (n_x - 1) + v_y**2 / (n_y - 1))
  level = alpha / tests
  crit = stats.t.ppf(1 - level / 2, df)

  def shortfall(ncp):
    return _t_test_power(ncp, df, crit) - power

  high = 10.0
  while shortfall(high) < 0 and high < 1e6:  # few df need a large ncp
    high *= 4
  return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-8)) * se


def _t_test_power(ncp: float, df: float, crit: float) -> float:
  """P(|T| > crit) for T = (Z + ncp) / √(V/df), Z ~ N(0,1), V ~ χ²_df.

  SciPy's noncentral t, except where it returns NaN (its far lower tail at
  few degrees of freedom): there the mean over V of P(|Z + ncp| > crit·√(V/df))
  at 4,000 χ² quantile midpoints (error ~1e-4).
  """
  power = stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp)
  if math.isfinite(power):
    return float(power)
  scale = crit * np.sqrt(stats.chi2.ppf(_QUANTILE_MIDPOINTS, df) / df)
  return float(np.mean(stats.norm.sf(scale - ncp) +
                       stats.norm.cdf(-scale - ncp)))


_QUANTILE_MIDPOINTS = (np.arange(4000) + 0.5) / 4000


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One arm against its reference in one metric (Welch + Holm + MDD).

  Attributes:
    arm, reference: the two settings; diff = mean(arm) − mean(reference).
    metric: the metric's key.
    n, n_ref: seeds with a value.
    mean, ref_mean, sd, ref_sd: per-arm mean and sample sd over seeds.
    diff, ci_low, ci_high: difference and its 1 − alpha interval.
    df, p: Welch's degrees of freedom and two-sided p-value.
    p_holm: p after Holm's correction over the family (this metric's pairs).
    significant: p_holm ≤ alpha.
    mdd: the difference detectable with `POWER` at alpha / family size.
    alpha: the level.
    family: how many pairs Holm's correction covered.
  """
  arm: str
  reference: str
  metric: str
  n: int
  n_ref: int
  mean: float
  ref_mean: float
  sd: float
  ref_sd: float
  diff: float
  ci_low: float
  ci_high: float
  df: float
  p: float
  p_holm: float
  significant: bool
  mdd: float
  alpha: float
  family: int

  def as_dict(self) -> Dict:
    return dataclasses.asdict(self)


def _clean(values) -> np.ndarray:
  values = np.asarray([v for v in values if v is not None], np.float64)
  return values[np.isfinite(values)]


def compare_arms(values: Mapping[str, Sequence[Optional[float]]],
                 pairs: Sequence[Tuple[str, str]], metric: str = "",
                 alpha: float = ALPHA,
                 power: float = POWER) -> List["Comparison"]:
  """Welch's test per (arm, reference) pair, Holm-corrected over the pairs.

  The pairs of one call are one family: Holm's correction runs over the
  pairs with a p-value, and each MDD is computed at alpha / (that count).

  Args:
    values: per-seed values of one metric per arm (None/NaN dropped).
    pairs: (arm, reference) pairs to compare, in report order.
    metric: the metric's key, copied into the results.
    alpha: family-wise level.
    power: power of the MDD.

  Returns:
    One `Comparison` per pair, in order. A pair with fewer than 2 values on
    a side has NaN test figures and is not counted in the family.
  """
  raw = []
  for arm, ref in pairs:
    x, y = _clean(values.get(arm, ())), _clean(values.get(ref, ()))
    test = welch_test(x, y, alpha) if len(x) >= 2 and len(y) >= 2 else None
    raw.append((arm, ref, x, y, test))
  p_values = [t.p if t is not None else math.nan for *_, t in raw]
  adjusted = holm(p_values)
  family = int(np.isfinite(p_values).sum())
  out = []
  for (arm, ref, x, y, test), p_holm in zip(raw, adjusted):
    mean = float(x.mean()) if len(x) else math.nan
    ref_mean = float(y.mean()) if len(y) else math.nan
    sd = float(x.std(ddof=1)) if len(x) > 1 else math.nan
    ref_sd = float(y.std(ddof=1)) if len(y) > 1 else math.nan
    if test is None:
      diff = mean - ref_mean
      low = high = df = p = mdd = math.nan
    else:
      diff, low, high = test.diff, test.ci_low, test.ci_high
      df, p = test.df, test.p
      mdd = min_detectable_difference(sd, len(x), ref_sd, len(y), alpha,
                                      power, max(family, 1))
    out.append(Comparison(
        arm, ref, metric, len(x), len(y), mean, ref_mean, sd, ref_sd,
        float(diff), float(low), float(high), float(df), float(p),
        float(p_holm), bool(p_holm <= alpha), float(mdd), alpha, family))
  return out
