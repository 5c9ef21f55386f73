"""What a QAT model holds: its quantized weights, whether it is quantized, and
the float model beneath it.

`QuantizedWeight` is one kernel with the very quantizer and range variables
the forward pass uses, so Q(w) read here is bit for bit what the layer
multiplies by. Noise analysis, mixed precision and export all read kernels
through it.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg import _tfmot
from kqreg.qat import quantizers
from kqreg.qat.layers import quantize_scope

__all__ = ["QuantizedWeight", "float_counterpart", "is_quantized",
           "quantized_weights"]


class QuantizedWeight:
  """One quantized weight tensor of a QAT model, with its quantizer state.

  Attributes:
    wrapper: the tfmot `QuantizeWrapper` holding it.
    weight: the float shadow variable w.
    quantizer: the tfmot quantizer the forward pass applies.
    variables: the quantizer's variables (`min_var`, `max_var`).

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> weight = kqreg.qat.quantized_weights(kqreg.quantize(model, "w4"))[0]
  >>> tuple(weight.weight.shape), type(weight.quantizer).__name__
  ((4, 2), 'WeightQuantizer')
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
  def weight_name(self) -> str:
    """The kernel's name in its layer: `kernel`, `recurrent_kernel`,
    `embeddings`; with as many sub-layer names as tell it from the layer's
    other kernels (a MultiHeadAttention's `query/kernel`, `key/kernel`, ...;
    a Bidirectional's `forward_lstm/lstm_cell/kernel`)."""
    parts = _name_parts(self.weight)
    others = [_name_parts(w) for w, _, _ in
              getattr(self.wrapper, "_weight_vars", []) if w is not self.weight]
    for n in range(1, len(parts)):
      if all(other[-n:] != parts[-n:] for other in others):
        return "/".join(parts[-n:])
    return "/".join(parts)

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

  def levels_used(self) -> np.ndarray:
    """max |Q(w)| / Δ per output channel, even for a per-tensor range.

    A calibrating converter stores every kernel per output channel, and a
    folded BatchNormalization scales a channel's values and step alike, so
    this count is what a converted file's channels hold.
    """
    q = self.channels_last(self.quantized()).numpy()
    step = self.grid()[2].numpy()
    peak = np.max(np.abs(q).reshape(-1, q.shape[-1]), axis=0)
    return np.round(peak / np.maximum(step, 1e-30)).astype(np.int64).reshape(-1)


def _name_parts(variable) -> List[str]:
  return variable.name.split(":")[0].split("/")


def quantized_weights(model: tf_keras.Model) -> List[QuantizedWeight]:
  """Every quantized weight tensor of `model`, in layer order.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> len(kqreg.qat.quantized_weights(kqreg.quantize(model, "w4")))
  1
  """
  found = []
  for layer in _wrappers(model):
    for weight, quantizer, variables in getattr(layer, "_weight_vars", []):
      if "min_var" in variables and hasattr(quantizer, "num_bits"):
        found.append(QuantizedWeight(layer, weight, quantizer, variables))
  return found


def _wrappers(model) -> Iterator:
  return _tfmot.iter_wrappers(model)


def is_quantized(model: tf_keras.Model) -> bool:
  """True if `model` holds a tfmot quantize wrapper or layer (nested too).

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> kqreg.qat.is_quantized(model), kqreg.qat.is_quantized(kqreg.quantize(model, "w4"))
  (False, True)
  """
  return (any(True for _ in _tfmot.iter_wrappers(model)) or
          any(True for _ in _tfmot.iter_quantize_layers(model)))


def float_counterpart(qat_model: tf_keras.Model) -> tf_keras.Model:
  """The QAT model with every quantizer removed and its float weights.

  Wrappers become their inner layer (rebuilt from config, with the original
  activation in place of tfmot's quantize-aware one) holding the float shadow
  weights; the input `QuantizeLayer` becomes a linear Activation, which the
  converter drops. Export converts it for its float reference file, and
  sensitivity runs it to perturb one kernel at a time.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> float_model = kqreg.qat.float_counterpart(kqreg.quantize(model, "w4a8"))
  >>> kqreg.qat.is_quantized(float_model), [w.shape for w in float_model.weights]
  (False, [TensorShape([4, 2]), TensorShape([2])])
  """
  made = {}

  def _strip(layer):
    if isinstance(layer, _tfmot.QuantizeLayer):
      new = tf_keras.layers.Activation("linear", name=layer.name)
    else:
      inner = layer.layer if isinstance(
          layer, _tfmot.QuantizeWrapper) else layer
      config = inner.get_config()
      activation = config.get("activation")
      if (isinstance(activation, dict) and
          activation.get("class_name") == "QuantizeAwareActivation"):
        config["activation"] = activation["config"]["activation"]
      new = type(inner).from_config(config)
    made[layer.name] = new
    return new

  with quantize_scope():
    clone = tf_keras.models.clone_model(qat_model, clone_function=_strip)
  for layer in qat_model.layers:
    new = made.get(layer.name)
    if new is None or not new.weights:
      continue
    # A wrapper owns its inner layer's kernel (the inner layer then holds a
    # quantized tensor in its place) next to its own quantizer variables,
    # which are named after the wrapper.
    wrapped = isinstance(layer, _tfmot.QuantizeWrapper)
    # Matched by the name below the layer's own: a composite layer holds
    # several `kernel`s (a MultiHeadAttention's `query/kernel`, ...).
    values = {_name_in_layer(w, new.name): w for w in layer.weights
              if not (wrapped and w.name.startswith(f"{layer.name}/"))}
    new.set_weights([values[_name_in_layer(w, new.name)].numpy()
                     for w in new.weights])
  return clone


def _name_in_layer(variable, layer_name: str) -> str:
  """`variable`'s name below its layer's: `kernel`, `query/kernel`."""
  parts = variable.name.split(":")[0].split("/")
  if layer_name in parts[:-1]:
    return "/".join(parts[len(parts) - 1 - parts[::-1].index(layer_name):])
  return parts[-1]
