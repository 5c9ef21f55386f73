"""δ statistics from NumPy arrays: the additive model's figures, no TensorFlow.

The same figures `kqreg.noise.weight_noise` reports for a kernel, computed
from plain arrays: the float weights w, the quantized weights Q(w), the step
Δ (a scalar or one per output channel, last axis) and the grid's ends. It is
the reference the TensorFlow path is tested against, and what a second
binding (say, Keras 3) would reuse.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

__all__ = ["STATISTIC_KEYS", "delta_statistics", "uniform_model_std"]

STATISTIC_KEYS = ("step", "step_min", "step_max", "delta_mean", "delta_std",
                  "delta_max_abs", "model_std", "std_ratio", "rel_norm",
                  "sqnr_db", "clip_fraction")

_SQRT12 = math.sqrt(12.0)


def uniform_model_std(step) -> float:
  """std(δ) under the additive model: Δ/√12, pooled over channels.

  Channels hold equally many weights, so the pooled variance is the mean of
  the per-channel variances Δ_c²/12.

  Example:
  >>> round(uniform_model_std(0.5), 6)
  0.144338
  >>> round(uniform_model_std([0.5, 0.5]), 6)
  0.144338
  """
  step = np.asarray(step, np.float64).reshape(-1)
  return float(np.sqrt(np.mean(np.square(step))) / _SQRT12)


def delta_statistics(w, quantized, step, *, grid_min=None, grid_max=None,
                     delta: Optional[np.ndarray] = None
                     ) -> Dict[str, float]:
  """The noise figures of one kernel, channels on the last axis.

  Args:
    w: float weights.
    quantized: Q(w), same shape (ignored when `delta` is given).
    step: Δ, a scalar or one per last-axis channel.
    grid_min, grid_max: the grid's ends (scalar or per channel); weights
      beyond them by more than 10⁻³ Δ count as clipped. None: no clipping.
    delta: δ itself, for a noise twin whose δ is a draw, not Q(w) − w.

  Returns:
    A dict with `STATISTIC_KEYS`.

  Example:
  >>> w = np.array([0.1, 0.26, -0.3, 0.49])
  >>> q = np.round(w / 0.25) * 0.25
  >>> s = delta_statistics(w, q, 0.25)
  >>> round(s["delta_max_abs"], 2), round(s["model_std"], 4)
  (0.1, 0.0722)
  """
  w = np.asarray(w, np.float64)
  d = (np.asarray(delta, np.float64) if delta is not None
       else np.asarray(quantized, np.float64) - w)
  channels = np.asarray(step).size
  w2 = w.reshape(-1, channels) if channels > 1 else w.reshape(-1, 1)
  d2 = d.reshape(w2.shape)
  step = np.asarray(step, np.float64).reshape(-1)
  clipped = np.zeros(w2.shape, bool)
  if grid_min is not None and grid_max is not None:
    slack = step.reshape(1, -1) * 1e-3
    clipped = ((w2 < np.asarray(grid_min, np.float64).reshape(1, -1) - slack)
               | (w2 > np.asarray(grid_max, np.float64).reshape(1, -1) + slack))
  model_std = uniform_model_std(step)
  delta_std = float(np.std(d2))
  w_norm, d_norm = float(np.linalg.norm(w2)), float(np.linalg.norm(d2))
  return {
      "step": float(np.mean(step)),
      "step_min": float(np.min(step)),
      "step_max": float(np.max(step)),
      "delta_mean": float(np.mean(d2)),
      "delta_std": delta_std,
      "delta_max_abs": float(np.max(np.abs(d2))),
      "model_std": model_std,
      "std_ratio": delta_std / model_std if model_std > 0 else float("nan"),
      "rel_norm": d_norm / w_norm if w_norm > 0 else float("nan"),
      "sqnr_db": (20.0 * math.log10(w_norm / d_norm)
                  if d_norm > 0 and w_norm > 0 else float("inf")),
      "clip_fraction": float(np.mean(clipped)),
  }
