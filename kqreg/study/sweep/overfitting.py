"""Does an arm overfit? The rise of its validation loss against a null.

`rise_test` per seed: how far the validation loss (running median over a
tenth of the epochs) ends above its minimum, against the rise that a flat
curve with the same epoch noise, independent or correlated from epoch to
epoch (AR(1)), reaches by chance (a simulated null). `overfitting_verdict`
estimates the noise correlation from all seeds of an arm, simulates the null
at an upper confidence bound of it (`rho_upper_bound`: a correlation
underestimated from a few short curves makes the null too narrow), combines
the seeds' p-values (Stouffer) and corrects over arms (Holm). Every
simulation uses a fixed seed, so a report is reproducible.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import signal
from scipy import stats

from kqreg.study.sweep.statistics import (ALPHA, NULL_DRAWS, ArrayOrFloat, _NULL_SEED,
                                    _scalar, holm)

__all__ = [
    "MAX_RHO", "RHO_BOUND_LEVEL", "smoothing_window", "epoch_noise",
    "epoch_correlation", "rho_upper_bound",
    "ar1_noise", "val_loss_rise", "rise_null",
    "rise_p_values", "RiseTest", "rise_test", "normal_score", "stouffer",
    "ArmOverfitting", "overfitting_verdict",
    "CALIBRATION_DRAWS", "SHAPES", "null_curves", "false_positive_rate",
]


# Grid of the noise's epoch-to-epoch correlation ρ for the null tables; an
# estimate is rounded up to it (a larger ρ gives a wider null: conservative).
_RHO_STEP = 0.05
MAX_RHO = 0.9


def smoothing_window(epochs: int) -> int:
  """Running-median window for a curve of `epochs`: max(3, epochs // 10)."""
  return max(3, epochs // 10)


def epoch_noise(curves) -> ArrayOrFloat:
  """Epoch-to-epoch noise σ of a curve, robust to its trend.

  The second difference y[t+1] − 2y[t] + y[t−1] is −2 times the residual of
  y[t] around the straight line through its neighbours, so a smooth trend
  (the falling loss, a slow rise) drops out; for independent noise of
  standard deviation σ its variance is 6σ². σ̂ = median|Δ²y| / (Φ⁻¹(0.75)·√6):
  the median keeps the few large second differences of a sharp early fall
  or a kink from inflating it. (Correlated noise makes σ̂ smaller than the
  noise's marginal σ; the null is simulated with the same estimator, so
  only the scale matters, see `rise_null`.)

  Args:
    curves: values along the last axis (at least 3).
  """
  curves = np.asarray(curves, np.float64)
  second = np.diff(curves, n=2, axis=-1)
  return _scalar(np.median(np.abs(second), axis=-1) /
                 (stats.norm.ppf(0.75) * math.sqrt(6.0)))


def epoch_correlation(curves) -> float:
  """Lag-1 autocorrelation ρ of the epoch noise, pooled over curves.

  Validation loss wanders: an epoch's noise carries over to the next (the
  weights move little per epoch), and a wander looks like a rise. For AR(1)
  noise e[t] = ρ·e[t−1] + innovation, the first differences have lag-1
  autocorrelation −(1 − ρ)/2, so ρ̂ = 1 + 2·r₁, with r₁ the lag-1
  autocorrelation of the first differences of each curve's second half
  (where the fast early fall is over; a linear trend only shifts the
  differences' mean, which is removed per curve), pooled over the curves.
  Clipped to [0, `MAX_RHO`]. One curve gives a rough ρ̂ (±0.3 at 60
  epochs); the seeds of an arm together a usable one.

  Args:
    curves: one curve, or several of the same process (rows of an array,
      or a list of curves of any lengths).

  Returns:
    ρ̂ in [0, MAX_RHO]; 0 when the curves are too short (< 8 epochs).
  """
  if len(curves) and np.ndim(curves[0]) == 0:
    curves = [curves]
  pooled_num = pooled_den = 0.0
  for curve in curves:
    curve = np.asarray(curve, np.float64)
    late = curve[len(curve) // 2:]
    if len(late) < 4:
      continue
    diff = np.diff(late)
    diff = diff - diff.mean()
    pooled_num += float(np.sum(diff[1:] * diff[:-1]))
    pooled_den += float(np.sum(diff * diff))
  if pooled_den <= 0:
    return 0.0
  return float(np.clip(1 + 2 * pooled_num / pooled_den, 0.0, MAX_RHO))


def _running_median(curves, window):
  windows = np.lib.stride_tricks.sliding_window_view(curves, window, axis=-1)
  return np.median(windows, axis=-1)


def val_loss_rise(curves, window: Optional[int] = None) -> ArrayOrFloat:
  """Final minus minimum of the running median of a curve.

  rise = m[−1] − min_t m[t], where m[t] is the median of `window`
  consecutive epochs (default `smoothing_window`); 0 when the smoothed
  curve ends at its minimum. A median, not a mean, so that one bad epoch
  (a loss spike) at the end or at the bottom does not make a rise.
  Values along the last axis.
  """
  curves = np.asarray(curves, np.float64)
  smooth = _running_median(curves, window or smoothing_window(
      curves.shape[-1]))
  return _scalar(smooth[..., -1] - smooth.min(axis=-1))


def _studentized(curves, window):
  rise = np.asarray(val_loss_rise(curves, window))
  sigma = np.asarray(epoch_noise(curves))
  with np.errstate(divide="ignore", invalid="ignore"):
    stat = np.where(sigma > 0, rise / sigma, np.where(rise > 0, np.inf, 0.0))
  return rise, sigma, stat


def _grid_rho(rho: float) -> float:
  rho = min(max(float(rho), 0.0), MAX_RHO)
  return round(math.ceil(rho / _RHO_STEP - 1e-9) * _RHO_STEP, 2)


def ar1_noise(rng: np.random.Generator, shape: Tuple[int, ...],
              rho: float) -> np.ndarray:
  """Stationary AR(1) noise, unit variance, along the last axis."""
  innovations = rng.standard_normal(shape)
  innovations[..., 1:] *= math.sqrt(1 - rho**2)
  # x[0] = z[0] ~ N(0, 1); x[t] = ρ·x[t−1] + √(1−ρ²)·z[t]: stationary from
  # the first epoch, no burn-in.
  return signal.lfilter([1.0], [1.0, -rho], innovations, axis=-1)


# One-sided confidence of the ρ bound the arm-level null is simulated at.
# Measured (flat null arms, α 0.05, 300 arms each; 30 epochs × 5 and 10
# seeds, 60 × 8): with the point estimate ρ̂ the arm-level test fired
# 0.05–0.07 at ρ 0.6 and 0.13–0.14 at ρ 0.8; with the true ρ (an oracle)
# 0.04–0.07 everywhere, so the excess is ρ̂'s error, not the null. A 0.5
# bound (median-unbiased) fired up to 0.21, 0.8 up to 0.07 at ρ 0.8, and
# 0.9 at most 0.03 (0.007–0.02 at ρ ≤ 0.4).
RHO_BOUND_LEVEL = 0.9
_RHO_TABLE_DRAWS = 500


def _pooled_correlation(curves: np.ndarray) -> np.ndarray:
  """`epoch_correlation` of equal-length arms (…, curves, epochs) at once."""
  late = curves[..., curves.shape[-1] // 2:]
  diff = np.diff(late, axis=-1)
  diff = diff - diff.mean(axis=-1, keepdims=True)
  num = np.sum(diff[..., 1:] * diff[..., :-1], axis=(-1, -2))
  den = np.sum(diff * diff, axis=(-1, -2))
  with np.errstate(divide="ignore", invalid="ignore"):
    rho = np.where(den > 0, 1 + 2 * num / den, 0.0)
  return np.clip(rho, 0.0, MAX_RHO)


@functools.lru_cache(maxsize=64)
def _correlation_estimates(epochs: int, curves: int) -> np.ndarray:
  """Sorted ρ̂ of flat AR(1) arms, one row per grid ρ (0, 0.05, …, MAX_RHO)."""
  rng = np.random.default_rng([_NULL_SEED, epochs, curves])
  return np.stack([np.sort(_pooled_correlation(ar1_noise(
      rng, (_RHO_TABLE_DRAWS, curves, epochs), rho))) for rho in _rho_grid()])


def _rho_grid() -> np.ndarray:
  return np.round(np.arange(0.0, MAX_RHO + 1e-9, _RHO_STEP), 2)


def rho_upper_bound(rho_hat: float, epochs: int, curves: int,
                    level: float = RHO_BOUND_LEVEL) -> float:
  """Upper confidence bound of the noise correlation behind a pooled ρ̂.

  The largest grid ρ (steps of 0.05, at most `MAX_RHO`) under which arms of
  `curves` flat curves of `epochs` give a pooled `epoch_correlation` at or
  below `rho_hat` with probability at least 1 − level (simulated, fixed
  seed): the ρ values the estimate does not rule out, at one-sided level
  1 − level, and their largest. From a few short curves ρ̂ scatters by
  ±0.2; a null simulated at ρ̂ itself is too narrow whenever ρ̂ falls
  low, and the arm-level test then fires too often (see
  `RHO_BOUND_LEVEL`). For fewer than 8 epochs ρ cannot be estimated
  (`epoch_correlation` gives 0) and the bound is 0 as well.

  Example:
    >>> rho_upper_bound(0.0, 30, 5) > 0.0  # 0 measured does not rule out 0.1
    True
    >>> rho_upper_bound(0.9, 30, 5)
    0.9
  """
  if epochs < 8 or curves < 1:
    return 0.0
  table = _correlation_estimates(int(epochs), int(curves))
  # Per grid ρ: the share of its simulated estimates at or below rho_hat.
  share = np.array([np.searchsorted(row, rho_hat + 1e-12, side="right")
                    for row in table]) / table.shape[1]
  allowed = np.nonzero(share >= 1.0 - level)[0]
  return float(_rho_grid()[allowed.max()]) if len(allowed) else 0.0


@functools.lru_cache(maxsize=256)
def rise_null(epochs: int, window: int, rho: float = 0.0,
              draws: int = NULL_DRAWS) -> np.ndarray:
  """Sorted null distribution of rise/σ̂ for flat curves of `epochs`.

  Simulates `draws` curves of stationary Gaussian AR(1) noise with lag-1
  correlation `rho` (0: independent epochs) around a constant, with a
  fixed seed, and returns each curve's studentized rise
  `val_loss_rise / epoch_noise`, sorted. The statistic does not depend on
  the curve's level or noise scale (both cancel), so one table per
  (epochs, window, ρ) serves every curve; the noise is measured from each
  curve with the same estimator, so its uncertainty is part of the null.
  """
  rng = np.random.default_rng([_NULL_SEED, epochs, window,
                               int(round(100 * rho))])
  _, _, stat = _studentized(ar1_noise(rng, (draws, epochs), rho), window)
  return np.sort(stat)


def rise_p_values(curves, window: Optional[int] = None, rho: float = 0.0):
  """(rise, σ̂, studentized rise, p) of curves along the last axis.

  p = (1 + #{null ≥ observed}) / (1 + draws), the Monte Carlo p-value
  against `rise_null` for the curves' length and `rho` (rounded up to a
  multiple of 0.05); never 0, and valid: under the null P(p ≤ α) ≤ α.
  Vectorized: every row is one curve.
  """
  curves = np.asarray(curves, np.float64)
  epochs = curves.shape[-1]
  window = window or smoothing_window(epochs)
  null = rise_null(epochs, window, _grid_rho(rho))
  rise, sigma, stat = _studentized(curves, window)
  exceed = len(null) - np.searchsorted(null, stat, side="left")
  p = (1.0 + exceed) / (1.0 + len(null))
  return _scalar(rise), _scalar(sigma), _scalar(stat), _scalar(p)


@dataclasses.dataclass(frozen=True)
class RiseTest:
  """The overfitting test of one validation-loss curve.

  Attributes:
    rise: final minus minimum of the running median (loss units).
    noise: σ̂, the curve's epoch-to-epoch noise (`epoch_noise`).
    rho: the noise's lag-1 correlation the null was simulated with.
    window: running-median window in epochs.
    epochs: finite epochs used.
    statistic: rise / noise.
    threshold: the rise a flat curve with this noise exceeds with
      probability alpha: the null's 1 − alpha quantile × noise.
    p: Monte Carlo p-value against the flat-curve null.
    overfits: p ≤ alpha.
    score: the curve's normal score for Stouffer's combination
      (`normal_score`), finite even where p = 1: a curve that ends at its
      minimum has rise 0 and p = 1 exactly, which Φ⁻¹ would turn into
      z = −∞, letting one such seed veto the whole arm.
  """
  rise: float
  noise: float
  rho: float
  window: int
  epochs: int
  statistic: float
  threshold: float
  p: float
  overfits: bool
  score: float = math.nan


def _finite(curve) -> np.ndarray:
  curve = np.asarray([v for v in curve if v is not None], np.float64)
  return curve[np.isfinite(curve)]


def rise_test(curve: Sequence[float], alpha: float = ALPHA,
              rho: Optional[float] = None) -> Optional[RiseTest]:
  """Does a validation-loss curve end above its minimum beyond noise?

  The null is "no overfitting": the curve falls or stays flat, plus
  stationary epoch noise. Its least favourable case, a flat curve (a
  falling one ends lower and rises less), is simulated with the noise's
  correlation ρ (`rise_null`), and the curve's rise is studentized by its
  own noise level; the test fires when it exceeds that null's 1 − alpha
  quantile (p ≤ alpha). With ρ known the test is exact up to Monte Carlo
  error. With ρ estimated from the single curve, measured false-positive
  rates at α = 0.05 (2000 flat curves of 30–150 epochs) are 0.01–0.02 for
  independent noise, 0.04–0.06 for AR(1) noise with ρ = 0.2–0.4, 0.07–0.09
  at ρ = 0.6; pooling ρ over an arm's seeds (`overfitting_verdict`) does
  better.

  Args:
    curve: validation loss per epoch (non-finite values dropped).
    alpha: level.
    rho: the noise's lag-1 correlation; None estimates it from this curve
      (`epoch_correlation`).

  Returns:
    A `RiseTest`, or None for fewer than 2 × window (and 6) finite epochs.
  """
  curve = _finite(curve)
  window = smoothing_window(len(curve))
  if len(curve) < 2 * window:
    return None
  rho = _grid_rho(epoch_correlation(curve) if rho is None else rho)
  rise, sigma, stat, p = rise_p_values(curve, window, rho)
  null = rise_null(len(curve), window, rho)
  threshold = float(np.quantile(null, 1 - alpha)) * sigma
  return RiseTest(rise, sigma, rho, window, len(curve), stat, threshold, p,
                  bool(p <= alpha), normal_score(null, stat))


def normal_score(null: np.ndarray, statistic: float) -> float:
  """E[Φ⁻¹(1 − U)] for U uniform over the p-values `statistic` can take.

  Against a sorted Monte Carlo `null` of N draws with `a` draws above the
  statistic and `t` tied with it, the exact randomized p-value is uniform on
  [a, a + t + 1] / (N + 1) under the null. Its mean normal score, (φ(Φ⁻¹(b))
  − φ(Φ⁻¹(a))) / (b − a) on [a, b], has mean 0 and variance at most 1 under
  the null, so Stouffer's sum of scores is calibrated or conservative, and
  it is finite even at the null's mass of rises of exactly 0 (p = 1).
  """
  n = len(null)
  above = n - np.searchsorted(null, statistic, side="right")
  ties = (np.searchsorted(null, statistic, side="right") -
          np.searchsorted(null, statistic, side="left"))
  low, high = above / (n + 1.0), (above + ties + 1.0) / (n + 1.0)
  density = lambda u: stats.norm.pdf(stats.norm.ppf(u))  # pylint: disable=unnecessary-lambda-assignment
  return float((density(high) - density(low)) / (high - low))


def stouffer(p_values: Sequence[float]) -> Tuple[float, float]:
  """Stouffer's combination of independent one-sided p-values.

  Z = Σ Φ⁻¹(1 − p_i) / √k, combined p = 1 − Φ(Z). Under the null (every
  p_i uniform, or larger) the combined p is uniform (or larger). It weighs
  evidence that is consistent across seeds: one extreme seed among flat
  ones does not decide alone.

  Returns:
    (Z, p); (NaN, NaN) for no p-values.
  """
  p = np.asarray(p_values, np.float64)
  if not len(p):
    return math.nan, math.nan
  z = float(stats.norm.isf(p).sum() / math.sqrt(len(p)))
  return z, float(stats.norm.sf(z))


@dataclasses.dataclass(frozen=True)
class ArmOverfitting:
  """The overfitting verdict of one arm from all its seeds.

  Attributes:
    arm: the setting.
    seeds: seeds whose curve was long enough to test.
    fired: seeds whose own `rise_test` fires at alpha.
    rho: the noise correlation the null was simulated at: the upper bound
      (`rho_upper_bound`) of the one estimated from all the arm's curves.
    rise_mean, noise_mean, threshold_mean: means over those seeds.
    z, p: Stouffer's combination of the seeds' p-values.
    p_holm: p after Holm's correction over the arms of the sweep.
    overfits: p_holm ≤ alpha.
    alpha: the level.
    rho_estimate: ρ̂, the pooled estimate the bound is taken from.
  """
  arm: str
  seeds: int
  fired: int
  rho: float
  rise_mean: float
  noise_mean: float
  threshold_mean: float
  z: float
  p: float
  p_holm: float
  overfits: bool
  alpha: float
  rho_estimate: float = math.nan

  def as_dict(self) -> Dict:
    return dataclasses.asdict(self)


def overfitting_verdict(curves: Mapping[str, Sequence[Sequence[float]]],
                        alpha: float = ALPHA) -> Dict[str, ArmOverfitting]:
  """Per arm: does its validation loss rise beyond noise, over its seeds?

  The noise correlation ρ is estimated from all the arm's curves together
  (`epoch_correlation`) and the null simulated at its upper confidence
  bound (`rho_upper_bound`, at the curves' median length); each seed's
  curve gets `rise_test` with that ρ; the
  seeds' normal scores are combined as in `stouffer` (seeds are independent
  runs); the arms' combined p-values are Holm-corrected (one family: "which
  arms overfit"), and an arm overfits where its adjusted p ≤ alpha.

  Args:
    curves: per arm, one validation-loss curve per seed.

  Returns:
    arm -> `ArmOverfitting`, in the order of `curves`, for arms with at
    least one testable curve.
  """
  tests, rhos = {}, {}
  for arm, arm_curves in curves.items():
    finite = [_finite(c) for c in arm_curves]
    if not finite:
      continue
    estimate = epoch_correlation(finite)
    rho = rho_upper_bound(estimate, int(np.median([len(c) for c in finite])),
                          len(finite))
    done = [t for t in (rise_test(c, alpha, rho) for c in finite) if t]
    if done:
      tests[arm], rhos[arm] = done, (rho, estimate)
  combined = {}
  for arm, done in tests.items():
    z = float(np.sum([t.score for t in done]) / math.sqrt(len(done)))
    combined[arm] = (z, float(stats.norm.sf(z)))
  adjusted = holm([p for _, p in combined.values()])
  out = {}
  for (arm, done), p_holm in zip(tests.items(), adjusted):
    z, p = combined[arm]
    out[arm] = ArmOverfitting(
        arm, len(done), sum(t.overfits for t in done), rhos[arm][0],
        float(np.mean([t.rise for t in done])),
        float(np.mean([t.noise for t in done])),
        float(np.mean([t.threshold for t in done])), z, p, float(p_holm),
        bool(p_holm <= alpha), alpha, rhos[arm][1])
  return out



# --------------------------------------------------------------------------
# The shipped arm-level test's false-positive rate, measured
# --------------------------------------------------------------------------

CALIBRATION_DRAWS = 200  # null sweeps per (epochs, seeds, ρ): rate ± 0.015
SHAPES = ("flat", "cosine")


def null_curves(rng: np.random.Generator, seeds: int, epochs: int,
                rho: float, shape: str = "flat") -> np.ndarray:
  """Validation-loss curves of an arm that does not overfit.

  "flat": a constant plus stationary AR(1) noise (the test's least
  favourable null). "cosine": the shape of a run under a cosine
  learning-rate schedule: the loss falls with the learning rate to a flat
  end, and the epoch noise shrinks with it (to 15% at the end), so the
  curve's early epochs are noisier than its last ones.
  """
  noise = ar1_noise(rng, (seeds, epochs), rho)
  if shape == "flat":
    return 1.0 + 0.02 * noise
  if shape != "cosine":
    raise ValueError(f"shape {shape!r}: use one of {SHAPES}.")
  lr = 0.5 * (1 + np.cos(np.pi * np.arange(epochs) / epochs))
  scale = 0.15 + 0.85 * lr
  return 1.0 + 0.3 * scale + 0.02 * scale * noise


@functools.lru_cache(maxsize=64)
def false_positive_rate(epochs: int, seeds: int, rho: float,
                        shape: str = "flat", alpha: float = ALPHA,
                        draws: int = CALIBRATION_DRAWS) -> float:
  """How often the shipped arm-level test calls a non-overfitting arm overfit.

  Simulates `draws` arms of `seeds` curves (`null_curves`, true noise
  correlation `rho`) and runs `overfitting_verdict` on each, as the report
  does (ρ estimated from the arm's own curves and bounded above, Stouffer
  over its seeds); the
  rate is the share with p ≤ alpha (one arm, so Holm changes nothing).
  Fixed seed: reproducible. Monte Carlo standard error √(r(1 − r)/draws).
  """
  rng = np.random.default_rng([_NULL_SEED, epochs, seeds,
                               int(round(100 * rho)), SHAPES.index(shape)])
  fired = 0
  for _ in range(draws):
    curves = null_curves(rng, seeds, epochs, rho, shape)
    verdict = overfitting_verdict({"null": list(curves)}, alpha)
    fired += bool(verdict and verdict["null"].p <= alpha)
  return fired / draws
