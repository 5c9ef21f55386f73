"""Quantization noise per weight tensor: δ = Q(w) − w against Δ/√12.

The additive model (QReg, AskariHemmat et al. 2022): a b-bit uniform quantizer
of step Δ adds noise δ roughly uniform in [−Δ/2, Δ/2] to each weight, so

    std(δ) ≈ Δ / √12,   Δ = (max − min) / (2^b − 1 − narrow_range).

`weight_noise` measures δ with the very quantizer and range variables the
forward pass uses (`kqreg.qat.introspect.QuantizedWeight`). For a noise twin
(policy `n<b>`) δ is the uniform draw of its last training step, on the same
Δ (rows say which: `kind` is "round" or "noise"). Rows are plain dicts that
go straight into CSV, JSON or pandas; a float model gives an empty list.
`kqreg.noise.arrays` computes the same figures from NumPy arrays.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg.qat.introspect import QuantizedWeight, quantized_weights
from kqreg.noise.traced import cached_trace, trace_signature

__all__ = [
    "WEIGHT_NOISE_KEYS",
    "delta_values",
    "weight_noise",
    "weight_noise_means",
]

WEIGHT_NOISE_KEYS = ("layer", "layer_type", "weight", "weight_bits", "kind",
                     "step", "step_min", "step_max", "delta_mean", "delta_std",
                     "delta_max_abs", "model_std", "std_ratio", "rel_norm",
                     "sqnr_db", "clip_fraction")

_SQRT12 = math.sqrt(12.0)


def _stat_tensors(qw: QuantizedWeight) -> Dict[str, tf.Tensor]:
  """The statistics of one tensor as TF scalars (traced into one graph)."""
  w = qw.channels_last(tf.convert_to_tensor(qw.weight))
  channels = w.shape[-1] if getattr(qw.quantizer, "per_axis", False) else None
  w = tf.reshape(w, (-1, channels) if channels else (-1, 1))
  delta = tf.reshape(qw.channels_last(qw.delta()), w.shape)
  nmin, nmax, step = qw.grid()
  step = tf.reshape(step, (-1,))
  # Clipped = beyond the range by more than rounding: weights that set the
  # range sit on its ends, where float32 nudging may land either side. A
  # noise twin clips nothing.
  slack = tf.reshape(step, (1, -1)) * 1e-3
  clipped = tf.logical_or(w < tf.reshape(nmin, (1, -1)) - slack,
                          w > tf.reshape(nmax, (1, -1)) + slack)
  if qw.is_noise:
    clipped = tf.zeros_like(clipped)
  return {
      "step": tf.reduce_mean(step),
      "step_min": tf.reduce_min(step),
      "step_max": tf.reduce_max(step),
      # Channels hold equally many weights, so the pooled variance of the
      # uniform model is the mean of the per-channel variances Δ_c²/12.
      "model_std": tf.sqrt(tf.reduce_mean(tf.square(step))) / _SQRT12,
      "delta_mean": tf.reduce_mean(delta),
      "delta_std": tf.math.reduce_std(delta),
      "delta_max_abs": tf.reduce_max(tf.abs(delta)),
      "w_norm": tf.norm(w),
      "d_norm": tf.norm(delta),
      "clip_fraction": tf.reduce_mean(tf.cast(clipped, tf.float32)),
  }


def _record(qw: QuantizedWeight, t: Dict[str, float]) -> Dict[str, object]:
  w_norm, d_norm = t.pop("w_norm"), t.pop("d_norm")
  model_std, delta_std = t["model_std"], t["delta_std"]
  return {
      "layer": qw.layer_name,
      "layer_type": type(qw.wrapper.layer).__name__,
      "weight": qw.weight_name,
      "weight_bits": qw.bits,
      "kind": qw.kind,
      **{k: t[k] for k in ("step", "step_min", "step_max", "delta_mean",
                           "delta_std", "delta_max_abs", "model_std")},
      "std_ratio": delta_std / model_std if model_std > 0 else float("nan"),
      "rel_norm": d_norm / w_norm if w_norm > 0 else float("nan"),
      "sqnr_db": (20.0 * math.log10(w_norm / d_norm)
                  if d_norm > 0 and w_norm > 0 else float("inf")),
      "clip_fraction": t["clip_fraction"],
  }


def weight_noise(qat_model: tf_keras.Model, *, traced: bool = True
                 ) -> List[Dict[str, object]]:
  """Statistics of δ = Q(w) − w for every quantized weight tensor.

  Args:
    qat_model: a model from `kqreg.quantize` (or any tfmot QAT model whose
      weight quantizers keep `min_var`/`max_var`).
    traced: compute them in one traced graph kept with the model for the
      next call, as a per-epoch callback wants; False computes them op by
      op, which for a single call skips the trace (measured once, a
      YOLOv8-xs's 63 kernels: 0.2 s instead of 4.6 s). The two agree up to
      float32 rounding.

  Returns:
    One dict per tensor with keys `WEIGHT_NOISE_KEYS`: `step` is Δ (mean over
    channels, `step_min`/`step_max` its extremes), `model_std` the uniform
    model's Δ/√12, `std_ratio` measured/model, `rel_norm` ‖δ‖/‖w‖, `sqnr_db`
    20·log10(‖w‖/‖δ‖), `clip_fraction` the share of weights outside the range,
    `kind` "round" (δ = Q(w) − w) or "noise" (a noise twin: δ is its last
    training step's draw, `clip_fraction` 0). Empty for a float model.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> rows = kqreg.noise.weight_noise(kqreg.quantize(model, "w4"), traced=False)
  >>> len(rows), rows[0]["kind"], sorted(rows[0]) == sorted(kqreg.noise.WEIGHT_NOISE_KEYS)
  (1, 'round', True)
  """
  qws = quantized_weights(qat_model)
  if not qws:
    return []
  def _all_stats():
    return [_stat_tensors(qw) for qw in qws]

  stats = _all_stats
  if traced:
    # One graph for all tensors: eager op-by-op statistics cost more than
    # the arithmetic on small models, which matters for a per-epoch
    # callback. Without autograph (the loops are over layers, not tensors):
    # converting this module's code took longer than tracing it.
    stats = cached_trace(qat_model, "weight_noise", trace_signature(qws),
                      lambda: tf.function(_all_stats, autograph=False))
  values = [{k: float(v) for k, v in t.items()} for t in stats()]
  return [_record(qw, t) for qw, t in zip(qws, values)]


def weight_noise_means(qat_model: tf_keras.Model
                       ) -> Dict[str, Optional[float]]:
  """`delta_std`, `model_std`, `std_ratio`, `rel_norm` averaged over tensors.

  The one-line summary a run's result.json keeps; all None for a float model.
  Computed op by op (`weight_noise(traced=False)`): it is called once.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> means = kqreg.noise.weight_noise_means(kqreg.quantize(model, "w4"))
  >>> sorted(means)
  ['delta_std', 'model_std', 'rel_norm', 'std_ratio']
  >>> kqreg.noise.weight_noise_means(model)["delta_std"] is None
  True
  """
  keys = ("delta_std", "model_std", "std_ratio", "rel_norm")
  stats = weight_noise(qat_model, traced=False)
  if not stats:
    return {k: None for k in keys}
  return {k: float(np.mean([s[k] for s in stats])) for k in keys}


def delta_values(qat_model: tf_keras.Model) -> Dict[str, np.ndarray]:
  """δ per quantized tensor, keyed `layer/weight` (for histograms).

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> deltas = kqreg.noise.delta_values(kqreg.quantize(model, "w4"))
  >>> {key: value.shape for key, value in deltas.items()}  # doctest: +ELLIPSIS
  {'...dense.../kernel...': (4, 2)}
  """
  out = {}
  for qw in quantized_weights(qat_model):
    out[f"{qw.layer_name}/{qw.weight_name}"] = qw.delta().numpy()
  return out


