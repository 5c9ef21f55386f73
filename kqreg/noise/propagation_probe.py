"""How weight noise reaches each layer's output, against the first-order model.

For a linear or conv layer y = w * x, independent zero-mean noise of variance
σ_c² on output channel c's weights gives

    E‖δ * x‖² = Σ_c σ_c² · Σ_positions ‖x_receptive field‖²,

with σ_c² = Δ_c² / 12. `propagation` reports that prediction relative to the
linear output ‖w * x + b‖ beside the measured ‖δ * x‖ there, before the
activation and any output quantizer (which the first-order model does not
describe), and the relative change of the model's output.
"""

from __future__ import annotations

import contextlib
from typing import Dict, List

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg import _tfmot
from kqreg.noise import first_order
from kqreg.qat import quantizers
from kqreg.qat.introspect import quantized_weights
from kqreg.noise.traced import cached_trace, trace_signature

__all__ = ["PROPAGATION_KEYS", "float_weights", "propagation"]


PROPAGATION_KEYS = ("layer", "measured", "measured_local", "predicted")


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
  for layer in _tfmot.iter_wrappers(qat_model):
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

  Example:
  >>> import kqreg, tf_keras, numpy as np
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> qat = kqreg.quantize(model, "w2")
  >>> x = np.ones((1, 4), "float32")
  >>> with kqreg.noise.float_weights(qat):
  ...   y_float = qat(x).numpy()
  >>> np.allclose(y_float, model(x).numpy(), atol=1e-6)
  True
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


def _call_of(wrapper):
  """`wrapper`'s call in its model, as (a function of new values for its
  tensor arguments, the Keras tensors it was called with)."""
  node = wrapper.inbound_nodes[0]
  structure = (node.call_args, node.call_kwargs)
  flat = tf.nest.flatten(structure)
  is_tensor = [tf_keras.backend.is_keras_tensor(t) for t in flat]

  def call(values):
    values = iter(values)
    args, kwargs = tf.nest.pack_sequence_as(
        structure, [next(values) if t else v for t, v in zip(is_tensor, flat)])
    return wrapper(*args, **{**kwargs, "training": False})

  return call, [v for t, v in zip(is_tensor, flat) if t]


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
    # Every tensor each weighted layer is called with: a MultiHeadAttention
    # takes a query and a value, which `layer.input` alone would not give.
    self._calls = [_call_of(w) for w in self.weighted]
    self._probe = tf_keras.Model(
        model.inputs,
        [t for _, tensors in self._calls for t in tensors] +
        [w.output for w in wrappers] + list(model.outputs))
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
    k = sum(len(tensors) for _, tensors in self._calls)
    n = len(self.wrappers)
    quant_run = self._probe(x, training=False)
    norm = lambda t: tf.norm(tf.cast(t, tf.float32))  # noqa: E731
    out = {}
    for i, wrapper in enumerate(self.wrappers):
      y_f = float_run[k + i]
      out[wrapper.name] = {"diff": norm(quant_run[k + i] - y_f),
                           "ref": norm(y_f)}
    start = 0
    for wrapper, (call, tensors) in zip(self.weighted, self._calls):
      values = float_run[start:start + len(tensors)]
      start += len(tensors)
      x_in = values[0]
      layer, qw = wrapper.layer, self.noisy.get(wrapper.name)
      kind = first_order.kind(layer) if qw else None
      if kind is None:
        # With float weights, this layer's output on its float-run input is
        # the float run's own output y_f: only the noisy side is recomputed.
        y_f = float_run[k + self.wrappers.index(wrapper)]
        out[wrapper.name]["local"] = norm(call(values) - y_f)
        continue
      # Where the first-order model applies, measure what it predicts: the
      # linear output's perturbation δ * x (the bias cancels), relative to
      # the float linear output, before activation and output quantizer.
      x_in = tf.cast(x_in, tf.float32)
      w = tf.convert_to_tensor(qw.weight)
      y_lin = first_order.linear(layer, kind, x_in, w)
      if getattr(layer, "bias", None) is not None:  # Dense, Conv, EinsumDense
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

  Example:
  >>> import kqreg, tf_keras, numpy as np
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
  ...                              tf_keras.layers.Dense(2, name="dense")])
  >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
  >>> rows = kqreg.noise.propagation(kqreg.quantize(model, "w4"), x)
  >>> [row["layer"] for row in rows]
  ['dense', 'output']
  """
  wrappers = list(_tfmot.iter_wrappers(qat_model))
  if not any(getattr(w, "_weight_vars", None) for w in wrappers):
    return []
  inputs = _check_probe(qat_model, x)
  inputs = inputs[0] if len(inputs) == 1 else inputs
  qws = quantized_weights(qat_model)
  probe = cached_trace(qat_model, "propagation", trace_signature(qws, wrappers),
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
