"""Seed-paired statistics of a sweep: does quantizing the weights regularize?

Every arm of a sweep (`fp`, `w8`, `w4`, `n4`, `fp` + weight decay, ...) is
trained with the same seeds, and seed s fixes the initialization and the data
order of every arm. Seed s of two arms is therefore a pair: the run-to-run
spread they share (a lucky initialization, an easy shuffle) cancels in their
difference, and a paired test sees differences that Welch's two-sample test
(`statistics.welch_test`) loses in that shared spread. Pairing is by seed,
never by position.

For each (arm, reference) pair of one metric `compare_paired` reports:

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
dose-response question: `per_seed_trend` (primary) and `dose_response`.

Plain NumPy/SciPy and the standard library only (no TensorFlow, no kqreg
imports), so it runs anywhere the per-seed numbers are. Every random draw
uses a fixed seed, so results are reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import stats

__all__ = [
    "ALPHA", "SIGN_FLIP_EXACT_MAX", "SIGN_FLIP_DRAWS",
    "PairedTTest", "paired_t_test",
    "SignFlipTest", "sign_flip_test",
    "Tost", "tost",
    "HolmIntervals", "holm_intervals",
    "DIFFERS_HIGHER", "DIFFERS_LOWER", "EQUIVALENT", "INCONCLUSIVE",
    "DIFFERS_WITHIN", "reading",
    "PairedComparison", "compare_paired",
    "Trend", "dose_response", "seed_effects", "per_seed_trend",
]

# The family-wise level; the same value as `statistics.ALPHA`, repeated here
# so that this module imports nothing from kqreg.
ALPHA = 0.05
# Up to this many pairs the sign-flip test enumerates all 2^n sign patterns
# (65,536 at 16); above, it draws SIGN_FLIP_DRAWS random patterns, whose
# p-value has a Monte Carlo standard error ≤ 0.0016 near p = 0.05.
SIGN_FLIP_EXACT_MAX = 16
SIGN_FLIP_DRAWS = 20000
_SIGN_FLIP_SEED = 2022  # fixed, so Monte Carlo p-values are reproducible

# The readings of `reading`; the equivalence ones name the margin.
DIFFERS_HIGHER = "differs (higher)"
DIFFERS_LOWER = "differs (lower)"
EQUIVALENT = "equivalent within ±{margin:g}"
DIFFERS_WITHIN = "differs but within ±{margin:g}"
INCONCLUSIVE = "inconclusive"

ArrayOrFloat = Union[float, np.ndarray]
ArrayOrInt = Union[int, np.ndarray]


def _scalar(a):
  """0-d arrays back to Python numbers; arrays (vectorized calls) unchanged."""
  a = np.asarray(a)
  if a.ndim:
    return a
  return int(a) if a.dtype.kind in "iub" else float(a)


def _paired_arrays(x, y) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """x and y as float arrays (None → NaN) and the mask of complete pairs."""
  x = np.asarray(x, np.float64)  # None becomes NaN
  y = np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim == 0:
    raise ValueError(f"paired values need equal shapes with a seed axis; "
                     f"got {x.shape} and {y.shape}.")
  return x, y, np.isfinite(x) & np.isfinite(y)


# --------------------------------------------------------------------------
# Paired t-test
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PairedTTest:
  """The paired t-test of mean(x − y); fields are arrays if vectorized.

  Attributes:
    diff: mean of the per-seed differences x − y.
    sd: their sample standard deviation (ddof 1).
    se: sd / √n.
    n: complete pairs used.
    t: diff / se.
    df: n − 1.
    p: two-sided p-value (NaN when n < 2 or the differences are constant).
    ci_low, ci_high: the 1 − alpha interval diff ± t_{1−α/2,df}·se.
    correlation: Pearson's r of the pairs (NaN when either side is
      constant or n < 2): how much of the seed-to-seed spread is shared.
    alpha: the level of the interval.
  """
  diff: ArrayOrFloat
  sd: ArrayOrFloat
  se: ArrayOrFloat
  n: ArrayOrInt
  t: ArrayOrFloat
  df: ArrayOrFloat
  p: ArrayOrFloat
  ci_low: ArrayOrFloat
  ci_high: ArrayOrFloat
  correlation: ArrayOrFloat
  alpha: float


def paired_t_test(x, y, alpha: float = ALPHA) -> PairedTTest:
  """Paired t-test of x − y over seeds, its interval and the pairs' correlation.

  A one-sample t-test on the differences d_s = x_s − y_s: t = d̄ / (s_d/√n)
  with n − 1 degrees of freedom. Var(d) = Var(x) + Var(y) − 2·Cov(x, y), so
  the stronger the pairs' correlation, the smaller the noise the test sees
  than Welch's. It assumes roughly normal differences; `sign_flip_test`
  checks it without that assumption.

  Args:
    x, y: per-seed values along the last axis, seed s of x paired with seed
      s of y (leading axes are independent tests, for simulation). Pairs
      where either value is None or NaN are dropped.
    alpha: 1 − alpha is the interval's confidence level.

  Returns:
    A `PairedTTest`. Constant differences (se = 0) give NaN t, p and df
    stays n − 1; the interval is then the point diff.

  Example:
    >>> r = paired_t_test([1.0, 2.0, 3.0, 4.0, None], [0.5, 1.8, 2.4, 3.9, 1])
    >>> r.n, round(r.diff, 3), round(r.p, 4), round(r.correlation, 3)
    (4, 0.35, 0.0605, 0.988)
  """
  x, y, valid = _paired_arrays(x, y)
  n = valid.sum(axis=-1)
  d = np.where(valid, x - y, 0.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    diff = d.sum(axis=-1) / n
    dev = np.where(valid, d - diff[..., None], 0.0)
    sd = np.sqrt((dev**2).sum(axis=-1) / (n - 1))
    sd = np.where(n >= 2, sd, np.nan)
    se = sd / np.sqrt(n)
    # Constant differences leave a rounding-error spread (~1e-17 of their
    # size): treat a spread below 1e-12 of the values' scale as none.
    scale = np.abs(d).max(axis=-1)
    se = np.where(se > 1e-12 * np.maximum(scale, 1e-300), se,
                  np.where(np.isfinite(se), 0.0, np.nan))
    df = np.where(n >= 2, n - 1.0, np.nan)
    t = np.where(se > 0, diff / se, np.nan)
    p = 2 * stats.t.sf(np.abs(t), df)
    half = np.where(se > 0, stats.t.ppf(1 - alpha / 2, df) * se, 0.0)
    half = np.where(np.isfinite(se), half, np.nan)
    correlation = _correlation(x, y, valid, n)
  return PairedTTest(_scalar(diff), _scalar(sd), _scalar(se), _scalar(n),
                     _scalar(t), _scalar(df), _scalar(p),
                     _scalar(diff - half), _scalar(diff + half),
                     _scalar(correlation), alpha)


def _correlation(x, y, valid, n) -> np.ndarray:
  """Pearson's r over the valid pairs, NaN where a side has no spread."""
  with np.errstate(divide="ignore", invalid="ignore"):
    x_mean = np.where(valid, x, 0.0).sum(axis=-1, keepdims=True) / n[..., None]
    y_mean = np.where(valid, y, 0.0).sum(axis=-1, keepdims=True) / n[..., None]
    dx = np.where(valid, x - x_mean, 0.0)
    dy = np.where(valid, y - y_mean, 0.0)
    sxx, syy = (dx**2).sum(axis=-1), (dy**2).sum(axis=-1)
    scale_x = np.abs(np.where(valid, x, 0.0)).max(axis=-1)
    scale_y = np.abs(np.where(valid, y, 0.0)).max(axis=-1)
    spread = ((np.sqrt(sxx) > 1e-12 * np.maximum(scale_x, 1e-300)) &
              (np.sqrt(syy) > 1e-12 * np.maximum(scale_y, 1e-300)) & (n >= 2))
    r = (dx * dy).sum(axis=-1) / np.sqrt(sxx * syy)
  return np.where(spread, np.clip(r, -1.0, 1.0), np.nan)


# --------------------------------------------------------------------------
# Sign-flip permutation test
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SignFlipTest:
  """The sign-flip permutation test of mean(x − y); arrays if vectorized.

  Attributes:
    diff: mean of the per-seed differences.
    n: complete pairs used.
    p: two-sided p-value.
    method: "exact" (all 2^n sign patterns) or "monte carlo".
    patterns: sign patterns compared (2^n, or the Monte Carlo draws).
  """
  diff: ArrayOrFloat
  n: ArrayOrInt
  p: ArrayOrFloat
  method: str
  patterns: int


def sign_flip_test(x, y, max_exact: int = SIGN_FLIP_EXACT_MAX,
                   draws: int = SIGN_FLIP_DRAWS,
                   seed: int = _SIGN_FLIP_SEED) -> SignFlipTest:
  """Exact sign-flip permutation test that the paired differences centre on 0.

  If arm and reference do not differ, d_s = x_s − y_s is symmetric about 0,
  so every sign pattern ±d_s is as likely as the one observed. The p-value
  is the share of patterns with |Σ ±d_s| ≥ |Σ d_s|: exact in size for any
  symmetric distribution, normal or not, which is what few seeds cannot
  check. With n ≤ max_exact all 2^n patterns are enumerated; above, `draws`
  random patterns are drawn (fixed seed) and p = (1 + hits)/(draws + 1),
  which counts the observed pattern and so is never 0 and keeps the size.

  Args:
    x, y: per-seed values along the last axis, paired by position (leading
      axes are independent tests). Pairs with a None/NaN are dropped (in a
      vectorized call they contribute a zero difference, which leaves the
      exact p unchanged).
    max_exact: the largest n enumerated exactly.
    draws: Monte Carlo patterns above max_exact.
    seed: the Monte Carlo generator's seed.

  Returns:
    A `SignFlipTest`; p is NaN without pairs.

  Example:
    >>> r = sign_flip_test([1.2, 0.9, 1.5, 1.1], [1.0, 1.0, 1.0, 1.0])
    >>> r.method, r.patterns, r.p  # 6 of the 16 patterns are as extreme
    ('exact', 16, 0.375)
  """
  x, y, valid = _paired_arrays(x, y)
  d = np.where(valid, x - y, 0.0)
  if d.ndim == 1:
    d = d[valid]
  n_valid = valid.sum(axis=-1)
  n = d.shape[-1]
  with np.errstate(invalid="ignore", divide="ignore"):
    diff = np.where(n_valid > 0, d.sum(axis=-1) / n_valid, np.nan)
  observed = np.abs(d.sum(axis=-1))
  # Sums of the same numbers in another order differ by rounding only.
  tolerance = 1e-10 * np.abs(d).sum(axis=-1)
  if n <= max_exact:
    codes = np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n)
    signs = (codes & 1) * 2.0 - 1.0
    flipped = np.abs(d @ signs.T)
    hits = (flipped >= (observed - tolerance)[..., None]).sum(axis=-1)
    p = hits / 2.0**n
    method, patterns = "exact", 2**n
  else:
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(draws, n)) * 2.0 - 1.0
    flipped = np.abs(d @ signs.T)
    hits = (flipped >= (observed - tolerance)[..., None]).sum(axis=-1)
    p = (1.0 + hits) / (draws + 1.0)
    method, patterns = "monte carlo", draws
  p = np.where(n_valid > 0, p, np.nan)
  return SignFlipTest(_scalar(diff), _scalar(n_valid), _scalar(p), method,
                      patterns)


# --------------------------------------------------------------------------
# Equivalence: two one-sided tests
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tost:
  """Paired two one-sided tests of |mean(x − y)| < margin; arrays if vectorized.

  Attributes:
    diff, se, df: as in `PairedTTest`.
    margin: the equivalence margin (metric units).
    p_lower: p of H0 diff ≤ −margin (one-sided, t-test).
    p_upper: p of H0 diff ≥ +margin.
    p: max(p_lower, p_upper), the TOST p-value.
    equivalent: p ≤ alpha (False where p is NaN).
    ci_low, ci_high: the 1 − 2·alpha interval; equivalent exactly when it
      lies inside (−margin, margin) (up to the boundary).
    alpha: the level.
  """
  diff: ArrayOrFloat
  se: ArrayOrFloat
  df: ArrayOrFloat
  margin: float
  p_lower: ArrayOrFloat
  p_upper: ArrayOrFloat
  p: ArrayOrFloat
  equivalent: Union[bool, np.ndarray]
  ci_low: ArrayOrFloat
  ci_high: ArrayOrFloat
  alpha: float


def tost(x, y, margin: float, alpha: float = ALPHA) -> Tost:
  """Paired equivalence test: is |mean(x − y)| < margin, at level alpha?

  A non-significant difference is not evidence of no difference: with few
  seeds it mostly says the seeds were too few. TOST (Schuirmann 1987) tests
  H0: |Δ| ≥ margin by two one-sided paired t-tests, each at alpha, and
  declares equivalence only if both reject, so its size is ≤ alpha at every
  Δ with |Δ| ≥ margin. That is the same as the 1 − 2α interval lying inside
  (−margin, margin).

  Args:
    x, y: per-seed values along the last axis (as `paired_t_test`).
    margin: the largest difference that counts as no difference (> 0).
    alpha: the level.

  Returns:
    A `Tost`. Constant differences (se = 0) give NaN p-values and
    equivalent False.

  Raises:
    ValueError: margin is not positive.

  Example:
    >>> r = tost([0.80, 0.81, 0.79, 0.80, 0.82],
    ...          [0.80, 0.80, 0.80, 0.81, 0.81], margin=0.02)
    >>> r.equivalent, round(r.p, 4), round(r.ci_low, 4), round(r.ci_high, 4)
    (True, 0.0055, -0.0095, 0.0095)
  """
  if not margin > 0:
    raise ValueError(f"tost needs a positive margin; got {margin}.")
  test = paired_t_test(x, y, alpha)
  diff, se, df = (np.asarray(v, np.float64)
                  for v in (test.diff, test.se, test.df))
  with np.errstate(divide="ignore", invalid="ignore"):
    ok = se > 0
    p_lower = np.where(ok, stats.t.sf((diff + margin) / se, df), np.nan)
    p_upper = np.where(ok, stats.t.cdf((diff - margin) / se, df), np.nan)
    half = np.where(ok, stats.t.ppf(1 - alpha, df) * se, 0.0)
    half = np.where(np.isfinite(se), half, np.nan)
  p = np.maximum(p_lower, p_upper)
  equivalent = np.asarray(p <= alpha)
  return Tost(_scalar(diff), _scalar(se), _scalar(df), float(margin),
              _scalar(p_lower), _scalar(p_upper), _scalar(p),
              bool(equivalent) if equivalent.ndim == 0 else equivalent,
              _scalar(diff - half), _scalar(diff + half), alpha)


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
                       _scalar(m[..., 0]), alpha)


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


def _is_finite(value) -> bool:
  try:
    return value is not None and math.isfinite(float(value))
  except (TypeError, ValueError):
    return False


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
    elif not _is_finite(arm_values[seed]):
      dropped.append((seed, "arm value missing or not finite"))
    elif not _is_finite(ref_values[seed]):
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


# --------------------------------------------------------------------------
# Dose-response: the effect against log std(δ)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trend:
  """A slope of the paired effect against log noise; arrays if vectorized.

  Attributes:
    slope: effect change per unit of log std(δ).
    se: its standard error.
    df: degrees of freedom of its t-test.
    t: slope / se.
    p: two-sided p of slope = 0.
    ci_low, ci_high: the 1 − alpha interval of the slope.
    points: what the slope was fitted on (arms for `dose_response`, seeds
      for `per_seed_trend`).
    method: "weighted least squares" or "per-seed slopes".
    alpha: the level.
    intercept: the WLS intercept (NaN for per-seed slopes).
    slopes: the per-seed slopes (None for WLS).
  """
  slope: ArrayOrFloat
  se: ArrayOrFloat
  df: ArrayOrFloat
  t: ArrayOrFloat
  p: ArrayOrFloat
  ci_low: ArrayOrFloat
  ci_high: ArrayOrFloat
  points: ArrayOrInt
  method: str
  alpha: float
  intercept: ArrayOrFloat = math.nan
  slopes: Optional[np.ndarray] = None


def dose_response(effects: Sequence[float], effect_ses: Sequence[float],
                  log_noise: Sequence[float], alpha: float = ALPHA) -> Trend:
  """WLS slope of the arms' paired effects against log std(δ).

  If quantization regularizes through its weight noise, the effect should
  grow with the noise: w8 < w4 < w2. This fits effect_a = a + b·log σ_a
  over the arms by weighted least squares, weights 1/se_a², and tests
  b = 0 with t on k − 2 degrees of freedom, the residual variance scaling
  the weights (so se_a need only be right up to a common factor).

  It treats the arms' effects as independent, but they are not: every
  effect is an arm minus the same reference runs, on the same seeds. Prefer
  `per_seed_trend`, which respects the pairing; this one is for summaries
  where only per-arm effects and their ses are at hand.

  Args:
    effects: per-arm paired effects (arm − reference) along the last axis
      (leading axes are independent fits).
    effect_ses: their standard errors.
    log_noise: log std(δ) of each arm (broadcast against effects).
    alpha: 1 − alpha is the slope interval's level.

  Returns:
    A `Trend` (method "weighted least squares"). Points with a non-finite
    value or se ≤ 0 are left out; fewer than 3 points, or no spread in
    log_noise, give NaN figures; so does an exact fit (residual 0).

  Example:
    >>> r = dose_response([0.0, 0.011, 0.019, 0.032], [0.004] * 4,
    ...                   [-6.0, -5.0, -4.0, -3.0])
    >>> round(r.slope, 4), round(r.p, 4), r.df
    (0.0104, 0.0039, 2.0)
  """
  y = np.asarray(effects, np.float64)
  s = np.asarray(effect_ses, np.float64)
  x = np.asarray(log_noise, np.float64)
  y, s, x = np.broadcast_arrays(y, s, x)
  valid = np.isfinite(y) & np.isfinite(s) & np.isfinite(x) & (s > 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    w = np.where(valid, 1.0 / np.where(valid, s, 1.0)**2, 0.0)
    y0, x0 = np.where(valid, y, 0.0), np.where(valid, x, 0.0)
    sum_w = w.sum(axis=-1, keepdims=True)
    x_bar = (w * x0).sum(axis=-1, keepdims=True) / sum_w
    y_bar = (w * y0).sum(axis=-1, keepdims=True) / sum_w
    sxx = (w * (x0 - x_bar)**2).sum(axis=-1)
    slope = (w * (x0 - x_bar) * (y0 - y_bar)).sum(axis=-1) / sxx
    intercept = y_bar[..., 0] - slope * x_bar[..., 0]
    resid = y0 - intercept[..., None] - slope[..., None] * x0
    points = valid.sum(axis=-1)
    df = np.where(points >= 3, points - 2.0, np.nan)
    sigma2 = (w * resid**2).sum(axis=-1) / df
    se = np.sqrt(sigma2 / sxx)
    scale = np.abs(slope) + 1e-300
    ok = (sxx > 0) & (se > 1e-12 * scale) & np.isfinite(df)
    se = np.where(ok, se, np.nan)
    t = slope / se
    p = 2 * stats.t.sf(np.abs(t), df)
    half = stats.t.ppf(1 - alpha / 2, df) * se
  slope = np.where(np.isfinite(df) & (sxx > 0), slope, np.nan)
  return Trend(_scalar(slope), _scalar(se), _scalar(df), _scalar(t),
               _scalar(p), _scalar(slope - half), _scalar(slope + half),
               _scalar(points), "weighted least squares", alpha,
               intercept=_scalar(intercept))


def seed_effects(values_by_arm: Mapping[str, Mapping[int, Optional[float]]],
                 arms: Sequence[str], reference: str
                 ) -> Tuple[List[int], np.ndarray]:
  """Per-seed paired effects arm − reference, as a (seeds × arms) matrix.

  The input of `per_seed_trend`: row s holds seed s's effect in each arm,
  NaN where the seed lacks the arm or the reference.

  Example:
    >>> seeds, m = seed_effects({"fp": {0: 1.0, 1: 2.0}, "w8": {0: 1.5},
    ...                          "w4": {0: 2.0, 1: 2.5}}, ["w8", "w4"], "fp")
    >>> seeds, m.tolist()
    ([0, 1], [[0.5, 1.0], [nan, 0.5]])
  """
  ref = values_by_arm.get(reference, {})
  seeds = sorted({s for arm in arms for s in values_by_arm.get(arm, {})}
                 | set(ref))
  matrix = np.full((len(seeds), len(arms)), np.nan)
  for i, seed in enumerate(seeds):
    for j, arm in enumerate(arms):
      a, b = values_by_arm.get(arm, {}).get(seed), ref.get(seed)
      if _is_finite(a) and _is_finite(b):
        matrix[i, j] = float(a) - float(b)
  return seeds, matrix


def per_seed_trend(effects, log_noise, alpha: float = ALPHA) -> Trend:
  """Trend of the paired effect in log std(δ), one slope per seed, t-tested.

  The primary trend test. For each seed s, the OLS slope b_s of its paired
  effects (arm − reference, same seed) on log std(δ) across the arms; then
  a one-sample t-test of the b_s against 0 on n_seeds − 1 degrees of
  freedom. Seeds are independent replicates, so the b_s are independent
  whatever the correlation between a seed's arms (they share its reference
  run, initialization and data order); and the seed's own level cancels
  within its slope. `dose_response` instead treats the k arms' mean effects
  as independent, which they are not (all subtract the same reference
  runs), and tests on k − 2 degrees of freedom (1 with three arms).

  Args:
    effects: (..., seeds, arms) per-seed effects, e.g. from
      `seed_effects`, or a mapping seed → per-arm effects. NaN entries are
      left out of that seed's fit; a seed with fewer than 2 arms (or no
      spread in log noise) gives no slope and is dropped.
    log_noise: log std(δ) per arm, broadcast against effects (per seed, if
      measured per run).
    alpha: 1 − alpha is the slope interval's level.

  Returns:
    A `Trend` (method "per-seed slopes"), slope = mean of the b_s, points =
    seeds with a slope, slopes = the b_s.

  Example:
    >>> effects = [[0.00, 0.02, 0.03], [0.01, 0.02, 0.05],
    ...            [-0.01, 0.01, 0.02], [0.00, 0.03, 0.03]]
    >>> r = per_seed_trend(effects, [-6.0, -5.0, -4.0])
    >>> r.points, round(r.slope, 3), round(r.p, 4), r.df
    (4, 0.016, 0.001, 3.0)
  """
  if isinstance(effects, Mapping):
    effects = [effects[s] for s in sorted(effects)]
  y = np.asarray(effects, np.float64)
  x = np.asarray(log_noise, np.float64)
  y, x = np.broadcast_arrays(y, x)
  if y.ndim < 2:
    raise ValueError(f"per_seed_trend needs (seeds, arms) effects; got shape "
                     f"{y.shape}.")
  valid = np.isfinite(y) & np.isfinite(x)
  with np.errstate(divide="ignore", invalid="ignore"):
    count = valid.sum(axis=-1, keepdims=True)
    x0, y0 = np.where(valid, x, 0.0), np.where(valid, y, 0.0)
    x_bar = x0.sum(axis=-1, keepdims=True) / count
    y_bar = y0.sum(axis=-1, keepdims=True) / count
    dx = np.where(valid, x0 - x_bar, 0.0)
    sxx = (dx**2).sum(axis=-1)
    slopes = (dx * (y0 - y_bar)).sum(axis=-1) / sxx
  slopes = np.where((count[..., 0] >= 2) & (sxx > 0), slopes, np.nan)
  test = paired_t_test(slopes, np.zeros_like(slopes), alpha)
  return Trend(test.diff, test.se, test.df, test.t, test.p, test.ci_low,
               test.ci_high, test.n, "per-seed slopes", alpha,
               slopes=slopes)
