"""Dose-response: does the paired effect of an arm grow with its weight noise?

The paper's second claim is that the regularization is correlated with the
quantization level. Given each seed's paired effects (arm − reference, from
`seed_effects`) and each arm's measured log std(δ), `per_seed_trend` (the
primary test) fits one slope per seed and t-tests the slopes over the seeds,
which are the independent replicates; `dose_response` is the weighted
least-squares slope of the arms' mean effects, shown beside it.

Plain NumPy/SciPy (and `paired_tests`), like `paired`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from kqreg.study.sweep.paired_tests import (ALPHA, ArrayOrFloat, ArrayOrInt,
                                           as_scalar, is_finite,
                                           paired_t_test)

__all__ = ["Trend", "dose_response", "seed_effects", "per_seed_trend"]


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
  return Trend(as_scalar(slope), as_scalar(se), as_scalar(df), as_scalar(t),
               as_scalar(p), as_scalar(slope - half), as_scalar(slope + half),
               as_scalar(points), "weighted least squares", alpha,
               intercept=as_scalar(intercept))


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
      if is_finite(a) and is_finite(b):
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
