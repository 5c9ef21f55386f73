"""Quantization noise: δ = Q(w) − w per weight tensor, and how it propagates.

The additive model (QReg, AskariHemmat et al. 2022): a b-bit uniform quantizer
of step Δ adds noise δ roughly uniform in [−Δ/2, Δ/2] to each weight, so

    std(δ) ≈ Δ / √12,   Δ = (max − min) / (2^b − 1 − narrow_range).

`weight_noise` measures δ with the very quantizer and range variables the
forward pass uses, so Q(w) here is bit for bit the kernel the layer multiplies
by. For a noise twin (`quantizers.WeightNoiseQuantizer`, policy `n<b>`) δ is
the uniform draw of its last training step, on the same Δ (rows say which:
`kind` is "round" or "noise"). `propagation` measures how much of it reaches
each layer's output and the model's output, and sets the first-order
prediction of the additive model beside it: for a linear or conv layer
y = w * x, independent zero-mean noise of variance σ_c² on output channel c's
weights gives

    E‖δ * x‖² = Σ_c σ_c² · Σ_positions ‖x_receptive field‖²,

with σ_c² = Δ_c² / 12, reported relative to the linear output ‖w * x + b‖
and compared with the measured ‖δ * x‖ there, before the activation and any
output quantizer (which the first-order model does not describe).

Both return plain dicts (one per tensor or layer) that go straight into CSV,
JSON or pandas. A float model gives empty lists.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg import _tfmot
from kqreg import first_order
from kqreg import quantizers

__all__ = [
    "WEIGHT_NOISE_KEYS",
    "PROPAGATION_KEYS",
    "QuantizedWeight",
    "quantized_weights",
    "weight_noise",
    "weight_noise_means",
    "propagation",
    "float_weights",
]

WEIGHT_NOISE_KEYS = ("layer", "layer_type", "weight", "weight_bits", "kind",
                     "step", "step_min", "step_max", "delta_mean", "delta_std",
                     "delta_max_abs", "model_std", "std_ratio", "rel_norm",
                     "sqnr_db", "clip_fraction")
PROPAGATION_KEYS = ("layer", "measured", "measured_local", "predicted")

_SQRT12 = math.sqrt(12.0)


class QuantizedWeight:
  """One quantized weight tensor of a QAT model, with its quantizer state.

  Attributes:
    wrapper: the tfmot `QuantizeWrapper` holding it.
    weight: the float shadow variable w.
    quantizer: the tfmot quantizer the forward pass applies.
    variables: the quantizer's variables (`min_var`, `max_var`).
  """

  def __init__(self, wrapper, weight, quantizer, variables):
    self.wrapper = wrapper
    self.weight = weight
    self.quantizer = quantizer
    self.variables = variables

  @property
  def layer_name(self) -> str:
    return self.wrapper.layer.name

  @property
  def bits(self) -> int:
    return int(self.quantizer.num_bits)

  @property
  def is_noise(self) -> bool:
    """True for a noise twin (`n<b>`), which adds noise and never rounds."""
    return isinstance(self.quantizer, quantizers.WeightNoiseQuantizer)

  @property
  def kind(self) -> str:
    """"noise" for a noise twin, "round" for a quantizer."""
    return "noise" if self.is_noise else "round"

  def quantized(self) -> tf.Tensor:
    """Q(w): the kernel the forward pass multiplies by at inference.

    A noise twin returns w: it perturbs only in training.
    """
    return self.quantizer(self.weight, training=False, weights=self.variables)

  def delta(self) -> tf.Tensor:
    """δ: Q(w) − w, or for a noise twin the draw of its last training step."""
    if self.is_noise:
      return self.quantizer.last_noise(tf.convert_to_tensor(self.weight),
                                       self.variables)
    return self.quantized() - tf.convert_to_tensor(self.weight)

  def channels_last(self, tensor: tf.Tensor) -> tf.Tensor:
    if isinstance(self.quantizer, quantizers.WeightQuantizer):
      return self.quantizer.to_channels_last(tensor)
    return tensor

  def grid(self) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(nudged_min, nudged_max, step), one entry per channel or a scalar."""
    return quantizers.nudged_grid(self.variables["min_var"],
                                  self.variables["max_var"], self.bits,
                                  bool(getattr(self.quantizer, "narrow_range",
                                               False)))


def quantized_weights(model: tf_keras.Model) -> List[QuantizedWeight]:
  """Every quantized weight tensor of `model`, in layer order."""
  found = []
  for layer in _wrappers(model):
    for weight, quantizer, variables in getattr(layer, "_weight_vars", []):
      if "min_var" in variables and hasattr(quantizer, "num_bits"):
        found.append(QuantizedWeight(layer, weight, quantizer, variables))
  return found


def _wrappers(model) -> Iterator:
  return _tfmot.iter_wrappers(model)


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
      "weight": qw.weight.name.split("/")[-1].split(":")[0],
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


def _signature(qws: List[QuantizedWeight], wrappers=()) -> Tuple:
  """The objects a traced function closes over, to tell when they change."""
  return tuple(wrappers) + tuple(
      obj for qw in qws
      for obj in (qw.wrapper, qw.weight, qw.quantizer, *qw.variables.values()))


def _compiled(model, key: str, signature: Tuple, build):
  """A per-model cache of traced functions, rebuilt when `signature` changes.

  A traced function keeps the wrappers, weights and quantizers it was traced
  with; if a wrapper's `_weight_vars` or the layers change, a stale one would
  report the old ones. Compared by identity (`==` on variables is
  elementwise).
  """
  cache = model.__dict__.setdefault("_kqreg_noise_cache", {})
  cached = cache.get(key)
  if (cached is None or len(cached[0]) != len(signature) or
      any(a is not b for a, b in zip(cached[0], signature))):
    cached = cache[key] = (signature, build())
  return cached[1]


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
    stats = _compiled(qat_model, "weight_noise", _signature(qws),
                      lambda: tf.function(_all_stats, autograph=False))
  values = [{k: float(v) for k, v in t.items()} for t in stats()]
  return [_record(qw, t) for qw, t in zip(qws, values)]


def weight_noise_means(qat_model: tf_keras.Model
                       ) -> Dict[str, Optional[float]]:
  """`delta_std`, `model_std`, `std_ratio`, `rel_norm` averaged over tensors.

  The one-line summary a run's result.json keeps; all None for a float model.
  Computed op by op (`weight_noise(traced=False)`): it is called once.
  """
  keys = ("delta_std", "model_std", "std_ratio", "rel_norm")
  stats = weight_noise(qat_model, traced=False)
  if not stats:
    return {k: None for k in keys}
  return {k: float(np.mean([s[k] for s in stats])) for k in keys}


def delta_values(qat_model: tf_keras.Model) -> Dict[str, np.ndarray]:
  """δ per quantized tensor, keyed `layer/weight` (for histograms)."""
  out = {}
  for qw in quantized_weights(qat_model):
    name = qw.weight.name.split("/")[-1].split(":")[0]
    out[f"{qw.layer_name}/{name}"] = qw.delta().numpy()
  return out


class _PassThrough:
  """Stands in for a weight quantizer: returns the float weights."""

  def __call__(self, inputs, training, weights, **kwargs):
    return tf.identity(inputs)


class _LastDraw:
  """Stands in for a noise twin at inference: w + its last training draw."""

  def __init__(self, quantizer: quantizers.WeightNoiseQuantizer):
    self.quantizer = quantizer

  def __call__(self, inputs, training, weights, **kwargs):
    return inputs + self.quantizer.last_noise(inputs, weights)


@contextlib.contextmanager
def _swapped_quantizers(qat_model: tf_keras.Model, replace):
  """Within the block, each weight quantizer q of the wrappers is replace(q)."""
  saved = []
  for layer in _wrappers(qat_model):
    if getattr(layer, "_weight_vars", None):
      saved.append((layer, layer._weight_vars))  # pylint: disable=protected-access
      layer._weight_vars = [(w, replace(q), v)  # pylint: disable=protected-access
                            for w, q, v in layer._weight_vars]  # pylint: disable=protected-access
  try:
    yield qat_model
  finally:
    for layer, weight_vars in saved:
      layer._weight_vars = weight_vars  # pylint: disable=protected-access


def float_weights(qat_model: tf_keras.Model
                  ) -> contextlib.AbstractContextManager:
  """Within the block, wrappers multiply by float w instead of Q(w).

  Everything else (activation quantizers, BN) stays as it is. Effective for
  eager calls (`model(x)`), not for already traced `predict` functions.
  """
  return _swapped_quantizers(qat_model, lambda q: _PassThrough())


def _noise_drawn(qat_model: tf_keras.Model
                 ) -> contextlib.AbstractContextManager:
  """Within the block, noise twins add their last draw at inference too.

  So `propagation` compares w + δ with w for a twin as it compares Q(w) with
  w for a quantizer; other quantizers stay as they are.
  """
  return _swapped_quantizers(
      qat_model, lambda q: _LastDraw(q) if isinstance(
          q, quantizers.WeightNoiseQuantizer) else q)


def _check_probe(model: tf_keras.Model, x) -> List[tf.Tensor]:
  inputs = tf.nest.flatten(x)
  if len(inputs) != len(model.inputs):
    raise ValueError(
        f"`propagation` got {len(inputs)} input arrays for a model with "
        f"{len(model.inputs)} inputs.")
  tensors = []
  for value, spec in zip(inputs, model.inputs):
    value = tf.convert_to_tensor(value, dtype=spec.dtype)
    expected = spec.shape
    if value.shape.rank != expected.rank or not tf.TensorShape(
        expected[1:]).is_compatible_with(value.shape[1:]):
      raise ValueError(
          f"`propagation` probe batch has shape {tuple(value.shape)}, but "
          f"model {model.name!r} takes {tuple(expected)}; pass a batch of "
          "the model's inputs.")
    tensors.append(value)
  return tensors


class _PropagationProbe:
  """The float-weight and quantized-weight runs, traced once per model.

  Both runs live in one traced function: the float run is traced inside
  `float_weights` and the quantized run after it, and a traced graph keeps
  what the wrappers multiplied by at trace time. Every epoch then costs one
  call at graph speed that returns only scalars, and a retrace (a new probe
  shape) repeats the same two steps, so it cannot mix them.
  """

  def __init__(self, model, wrappers, qws):
    self.model = model
    self.wrappers = wrappers
    noise_by_layer = {}
    for qw in qws:
      noise_by_layer.setdefault(qw.wrapper.name, []).append(qw)
    # The first-order model covers layers with one quantized kernel.
    self.noisy = {name: qws[0] for name, qws in noise_by_layer.items()
                  if len(qws) == 1}
    self.weighted = [w for w in wrappers if w.name in noise_by_layer]
    self._probe = tf_keras.Model(
        model.inputs,
        [w.input for w in self.weighted] + [w.output for w in wrappers] +
        list(model.outputs))
    # Python loops over layers: autograph would only add its conversion time.
    self._fn = tf.function(self._both_runs, reduce_retracing=True,
                           autograph=False)

  def _both_runs(self, x):
    with float_weights(self.model):
      float_run = self._probe(x, training=False)
    with _noise_drawn(self.model):
      return self._compare(x, float_run)

  def _compare(self, x, float_run):
    """Norms of the perturbations and the first-order predictions."""
    k, n = len(self.weighted), len(self.wrappers)
    quant_run = self._probe(x, training=False)
    norm = lambda t: tf.norm(tf.cast(t, tf.float32))  # noqa: E731
    out = {}
    for i, wrapper in enumerate(self.wrappers):
      y_f = float_run[k + i]
      out[wrapper.name] = {"diff": norm(quant_run[k + i] - y_f),
                           "ref": norm(y_f)}
    for x_in, wrapper in zip(float_run[:k], self.weighted):
      layer, qw = wrapper.layer, self.noisy.get(wrapper.name)
      kind = first_order.kind(layer) if qw else None
      if kind is None:
        # With float weights, this layer's output on its float-run input is
        # the float run's own output y_f: only the noisy side is recomputed.
        y_f = float_run[k + self.wrappers.index(wrapper)]
        out[wrapper.name]["local"] = norm(wrapper(x_in, training=False) - y_f)
        continue
      # Where the first-order model applies, measure what it predicts: the
      # linear output's perturbation δ * x (the bias cancels), relative to
      # the float linear output, before activation and output quantizer.
      x_in = tf.cast(x_in, tf.float32)
      w = tf.convert_to_tensor(qw.weight)
      y_lin = first_order.linear(layer, kind, x_in, w)
      if getattr(layer, "use_bias", False) and layer.bias is not None:
        y_lin = y_lin + layer.bias
      _, _, step = qw.grid()
      energy = first_order.receptive_energy(layer, kind, x_in)
      variance = tf.broadcast_to(
          tf.reshape(tf.square(step) / 12.0, (-1,)), energy.shape)
      out[wrapper.name].update(
          local=norm(first_order.linear(layer, kind, x_in, qw.delta())),
          predicted=tf.sqrt(tf.reduce_sum(variance * energy)),
          linear_ref=norm(y_lin))
    outputs_q = tf.nest.flatten(quant_run[k + n:])
    outputs_f = tf.nest.flatten(float_run[k + n:])
    diff = tf.concat([tf.reshape(a - b, (-1,))
                      for a, b in zip(outputs_q, outputs_f)], 0)
    ref = tf.concat([tf.reshape(b, (-1,)) for b in outputs_f], 0)
    out["__output__"] = {"diff": norm(diff), "ref": norm(ref)}
    return out

  def __call__(self, x) -> Dict[str, Dict[str, float]]:
    result = self._fn(x)
    return {name: {k: float(v) for k, v in values.items()}
            for name, values in result.items()}


def propagation(qat_model: tf_keras.Model, x) -> List[Dict[str, object]]:
  """How much of the weight noise reaches each quantized layer and the output.

  Runs `x` through the model twice in inference mode, once with Q(w) (for a
  noise twin: w + its last training draw) and once with the float shadow
  weights w (activation quantizers as they are).

  Args:
    qat_model: a QAT model from `kqreg.quantize`.
    x: a probe batch of the model's inputs.

  Returns:
    One dict per quantize wrapper, then one with `layer` = "output", keys
    `PROPAGATION_KEYS`: `measured` = ‖y_q − y‖/‖y‖ of the layer's output with
    noise accumulated from all layers before; `measured_local` the
    perturbation by the layer's own weight noise only (same float-run input
    for both), and `predicted` the additive model's first-order estimate of
    it. For Dense, Conv2D and DepthwiseConv2D (one quantized kernel) both are
    taken at the linear output, ‖δ * x‖/‖w * x + b‖, before the activation
    and output quantizer, which the first-order model does not describe;
    elsewhere `measured_local` is taken at the layer's output, relative to
    ‖y‖, and `predicted` is None. Empty for a float model.

  Raises:
    ValueError: `x` does not fit the model's inputs.
  """
  wrappers = list(_wrappers(qat_model))
  if not any(getattr(w, "_weight_vars", None) for w in wrappers):
    return []
  inputs = _check_probe(qat_model, x)
  inputs = inputs[0] if len(inputs) == 1 else inputs
  qws = quantized_weights(qat_model)
  probe = _compiled(qat_model, "propagation", _signature(qws, wrappers),
                    lambda: _PropagationProbe(qat_model, wrappers, qws))
  norms = probe(inputs)

  def _ratio(num, den):
    return num / den if den else float("nan")

  rows = []
  for wrapper in wrappers:
    values = norms[wrapper.name]
    row = {"layer": wrapper.layer.name,
           "measured": _ratio(values["diff"], values["ref"]),
           "measured_local": None, "predicted": None}
    local_ref = values.get("linear_ref", values["ref"])
    if "local" in values:
      row["measured_local"] = _ratio(values["local"], local_ref)
    if "predicted" in values:
      row["predicted"] = _ratio(values["predicted"], local_ref)
    rows.append(row)
  output = norms["__output__"]
  rows.append({"layer": "output",
               "measured": _ratio(output["diff"], output["ref"]),
               "measured_local": None, "predicted": None})
  return rows
