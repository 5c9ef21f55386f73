"""The tests of one pair of arms, paired by seed: paired t, sign flip, TOST.

Given the per-seed values x and y of two arms (seed s of each is a pair),
`paired_t_test` tests their mean difference, `sign_flip_test` checks its p
without assuming normality (an exact permutation test of the differences'
signs), and `tost` tests equivalence within ±margin. Each is vectorized
over leading axes, so a simulation of thousands of studies is one call.
`paired.compare_paired` runs them over a family of pairs.

Plain NumPy/SciPy and the standard library only (no TensorFlow, no kqreg
imports). Every random draw uses a fixed seed, so results are reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple, Union

import numpy as np
from scipy import stats

__all__ = [
    "ALPHA", "SIGN_FLIP_EXACT_MAX", "SIGN_FLIP_DRAWS",
    "PairedTTest", "paired_t_test",
    "SignFlipTest", "sign_flip_test",
    "Tost", "tost",
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


ArrayOrFloat = Union[float, np.ndarray]


ArrayOrInt = Union[int, np.ndarray]


def as_scalar(a):
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
  return PairedTTest(as_scalar(diff), as_scalar(sd), as_scalar(se), as_scalar(n),
                     as_scalar(t), as_scalar(df), as_scalar(p),
                     as_scalar(diff - half), as_scalar(diff + half),
                     as_scalar(correlation), alpha)


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
  return SignFlipTest(as_scalar(diff), as_scalar(n_valid), as_scalar(p), method,
                      patterns)


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
  return Tost(as_scalar(diff), as_scalar(se), as_scalar(df), float(margin),
              as_scalar(p_lower), as_scalar(p_upper), as_scalar(p),
              bool(equivalent) if equivalent.ndim == 0 else equivalent,
              as_scalar(diff - half), as_scalar(diff + half), alpha)


def is_finite(value) -> bool:
  try:
    return value is not None and math.isfinite(float(value))
  except (TypeError, ValueError):
    return False
