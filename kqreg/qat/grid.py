"""The b-bit grid: allowed bit-widths, level counts and TensorFlow's nudged grid.

Pure Python and NumPy: no TensorFlow, no Keras, no tfmot. A weight grid is
symmetric and narrow (2^b − 1 levels, ±(2^(b−1) − 1)·Δ, Δ = range/(2^b − 2));
an activation grid is full (2^b levels, Δ = range/(2^b − 1)).
"""

from __future__ import annotations

import numbers
from typing import Optional, Tuple

import numpy as np

__all__ = ["ACTIVATION_BITS", "WEIGHT_BITS", "check_bits", "nudged_grid",
           "num_levels"]


WEIGHT_BITS = (2, 8)
"""Inclusive range of weight bit-widths (TFLite stores 2..8-bit weights)."""


ACTIVATION_BITS = (2, 16)
"""Inclusive range of activation bit-widths (`fake_quant` supports 2..16)."""


def check_bits(bits: Optional[int], allowed: Tuple[int, int],
               what: str) -> Optional[int]:
  """Returns `bits` if it is None or an integer in `allowed`, else raises.

  Args:
    bits: bit-width to check; None means "keep float".
    allowed: inclusive (low, high) range.
    what: argument name used in the message, e.g. "weight_bits".

  Returns:
    `bits` as an `int`, or None.

  Raises:
    ValueError: `bits` is not None and not an integer in `allowed`.
  """
  if bits is None:
    return None
  low, high = allowed
  if (isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or
      not low <= bits <= high):
    raise ValueError(
        f"`{what}` must be an integer between {low} and {high}, or None for "
        f"float. Received: {what}={bits!r}")
  return int(bits)


def num_levels(bits: int, narrow_range: bool = False) -> int:
  """Number of grid levels of a `bits`-bit quantizer."""
  return 2**bits - int(bool(narrow_range))


def nudged_grid(min_value, max_value, bits: int, narrow_range: bool
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The grid `tf.quantization.fake_quant_*` uses for a range, in NumPy.

  Mirrors TensorFlow's `Nudge` (fake_quant_ops_functor.h) in float32: the
  step comes from the stored range, then the range shifts so that zero falls
  on a level. `kqreg.qat.quantizers.nudged_grid` is the same in TensorFlow.

  Returns:
    `(nudged_min, nudged_max, step)`, each shaped like `min_value`.

  Example:
  >>> lo, hi, step = nudged_grid(-1.0, 1.0, 4, narrow_range=True)
  >>> float(lo), float(hi), round(float(step), 6)
  (-1.0, 1.0, 0.142857)
  """
  min_value = np.asarray(min_value, np.float32)
  max_value = np.asarray(max_value, np.float32)
  quant_min = np.float32(1.0 if narrow_range else 0.0)
  quant_max = np.float32(2**bits - 1)
  step = (max_value - min_value) / (quant_max - quant_min)
  zero_point_from_min = quant_min - min_value / step
  # TensorFlow rounds half away from zero (std::round) here.
  nudged_zero_point = np.clip(
      np.sign(zero_point_from_min) * np.floor(np.abs(zero_point_from_min) +
                                              np.float32(0.5)),
      quant_min, quant_max).astype(np.float32)
  return ((quant_min - nudged_zero_point) * step,
          (quant_max - nudged_zero_point) * step, step)
