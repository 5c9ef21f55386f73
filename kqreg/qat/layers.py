"""kqreg's tfmot layer classes and the scope that loads saved QAT models.

`QuantizeWrapperV2` and `QuantizeLayer` subclass tfmot's only to control
autograph: Keras converts the `call` of every layer defined outside Keras,
and with it tfmot's and kqreg's quantizer code. kqreg's wrapper converts only
when the wrapped layer needs it; its input quantizer never does.
"""

from __future__ import annotations

from typing import Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras
from tensorflow.python.util import tf_inspect  # pylint: disable=g-direct-tensorflow-import
from tf_keras.src.utils import layer_utils  # pylint: disable=g-direct-tensorflow-import

from kqreg import _tfmot
from kqreg.qat import attention
from kqreg.qat import families as configs_lib
from kqreg.qat import layer_norm
from kqreg.qat import quantizers

__all__ = ["QuantizeLayer", "QuantizeWrapperV2", "input_range",
           "quantize_scope"]

_tfmot_keras = _tfmot.tfmot_keras


class QuantizeLayer(_tfmot.QuantizeLayer):
  """tfmot's QuantizeLayer, marked built by `build`.

  tfmot's `build` never sets `built`, so loading a `.keras` file builds the
  layer twice and fails ("expected 5 variables, but received 3").
  `quantize_scope` loads `QuantizeLayer` as this class.

  Example:
  >>> import kqreg
  >>> layer = kqreg.qat.QuantizeLayer(kqreg.qat.ActivationQuantizer(8))
  >>> layer.build((None, 4)); layer.built
  True
  """

  def build(self, input_shape):
    super().build(input_shape)
    self.built = True

  def _should_use_autograph(self) -> bool:
    # Keras converts every `call` defined outside Keras; this one branches on
    # Python values only, so converting it is tracing time spent for nothing.
    return False


class QuantizeWrapperV2(_tfmot.QuantizeWrapperV2):
  """tfmot's QuantizeWrapperV2, building the wrapped layer first.

  `quantize_apply` wraps built layers, so a saved wrapper lists the inner
  layer's weights before its quantizer variables; a wrapper rebuilt from a
  `.keras` file would otherwise create them in another order and fail to
  load. `quantize_scope` loads `QuantizeWrapperV2` as this class.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> qat = kqreg.quantize(model, "w4")
  >>> type(qat.layers[0]).__name__, qat.layers[0].name  # doctest: +ELLIPSIS
  ('QuantizeWrapperV2', 'quant_dense...')
  """

  def build(self, input_shape):
    if not self.layer.built:
      self.layer.build(input_shape)
      self.layer.built = True
    attention.build_projections(self.layer)
    super().build(input_shape)

  def _init_call_fn_args(self, expects_training_arg=None):
    super()._init_call_fn_args(expects_training_arg)
    inner = getattr(self, "layer", None)
    names = (tf_inspect.getfullargspec(inner.call).args
             if inner is not None else [])
    if len(names) > 2 and names[2] != "training":
      # A layer of several inputs (a MultiHeadAttention's query, value):
      # Keras names positional arguments after these when it saves the
      # graph, so a loaded model passes `value` again.
      self._call_spec = layer_utils.CallFunctionSpec(
          tf_inspect.getfullargspec(inner.call))
      self._call_spec.expects_training_arg = True

  def __call__(self, inputs, *args, **kwargs):
    if (getattr(self.quantize_config, "output_on_input_range", False) and
        hasattr(inputs, "_keras_history")):
      # Called on the graph (built, cloned or loaded): the one time the
      # layer that made the input is known. Its output quantizer reads it.
      self.input_range = input_range(inputs)
    return super().__call__(inputs, *args, **kwargs)

  def call(self, inputs, *args, **kwargs):
    # tfmot's `call(inputs, training=None)` would take a second positional
    # input (a MultiHeadAttention's `value`) for `training`: pass it on by
    # the wrapped layer's own argument names.
    if args:
      names = tf_inspect.getfullargspec(self.layer.call).args[2:]
      kwargs.update(zip(names, args))
    return super().call(inputs, **kwargs)

  def _weight_name(self, name: str) -> str:
    # tfmot names a kernel's range variables after its last name component;
    # a composite layer's sub-layer kernels (a MultiHeadAttention's four
    # `kernel`s) keep their sub-layer's name too, so they stay distinct.
    parts = name.split(":")[0].split("/")
    if len(parts) >= 2 and parts[-2] != self.layer.name:
      return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]

  def _should_use_autograph(self) -> bool:
    # tfmot's `call` and kqreg's quantizers branch on Python values only, but
    # `call` runs `self.layer.call` itself: convert it when Keras would
    # convert the wrapped layer (a subclassed one may branch on tensors),
    # not for Keras's own layers.
    return self.layer._should_use_autograph()  # pylint: disable=protected-access


def input_range(tensor) -> Optional[quantizers.RangeSource]:
  """The quantizer and range that put graph tensor `tensor` on its grid.

  Looks through layers that keep their input's grid (padding, max pooling,
  ...) to the input quantizer or wrapper that made it; None if the tensor
  has no range of its own (a float layer, an unranged output).

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([
  ...     tf_keras.Input((4,)), tf_keras.layers.Dense(2, name="d"),
  ...     tf_keras.layers.Dropout(0.5)])
  >>> qat = kqreg.quantize(model, "w4a8")
  >>> kqreg.qat.layers.input_range(qat.output).variables["max_var"].name
  'quant_d/post_activation_max:0'
  """
  history = getattr(tensor, "_keras_history", None)
  while history is not None:
    layer = history.layer
    if isinstance(layer, _tfmot.QuantizeLayer):
      return (quantizers.RangeSource(layer.quantizer, layer.quantizer_vars)
              if layer.quantizer is not None else None)
    if isinstance(layer, _tfmot.QuantizeWrapper):
      return _output_range(layer)
    if (isinstance(layer, tf_keras.layers.InputLayer) or
        not isinstance(layer, configs_lib.GRID_PRESERVING)):
      return None
    node = layer._inbound_nodes[history.node_index]  # pylint: disable=protected-access
    inputs = node.keras_inputs
    if len(inputs) != 1:
      return None
    history = getattr(inputs[0], "_keras_history", None)
  return None


def _output_range(wrapper) -> Optional[quantizers.RangeSource]:
  """The range of `wrapper`'s output: its output quantizer's, or that of the
  one activation it quantizes after."""
  # pylint: disable=protected-access
  if wrapper._output_quantizers:
    quantizer = wrapper._output_quantizers[0]
    if isinstance(quantizer, quantizers.InputRangeQuantizer):
      return quantizer.source()
    return quantizers.RangeSource(quantizer, wrapper._output_quantizer_vars)
  post = [a for a in wrapper._quantize_activations
          if getattr(a, "_post_activation_vars", None) is not None]
  if len(post) != 1 or len(wrapper._quantize_activations) != 1:
    return None
  return quantizers.RangeSource(post[0].quantizer,
                                post[0]._post_activation_vars)


class _QuantizeScope(tf_keras.utils.CustomObjectScope):
  """A custom-object scope that also has `.keras` weights read from memory."""

  def __enter__(self):
    scope = super().__enter__()
    self._in_memory = _tfmot.keras_archive_read_in_memory()
    self._in_memory.__enter__()
    return scope

  def __exit__(self, *args, **kwargs):
    try:
      super().__exit__(*args, **kwargs)
    finally:
      self._in_memory.__exit__(None, None, None)


def quantize_scope(*args) -> tf_keras.utils.CustomObjectScope:
  """A scope holding tfmot's and every kqreg custom object.

  Inside it, `tf_keras.models.load_model` also reads a `.keras` file's
  weights from memory, once: Keras's own loader reads them out of the zip
  archive, which Python 3.11 makes slow (a w4a8 YOLOv8-xs detector, 17 MB
  of weights: 32 s -> 17 s).

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> import os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), "qat.keras")
  >>> kqreg.quantize(model, "w4").save(path)
  >>> with kqreg.quantize_scope():
  ...   loaded = tf_keras.models.load_model(path)
  >>> kqreg.qat.is_quantized(loaded)
  True

  Args:
    *args: further dicts of custom objects.
  """
  objects = {
      "WeightQuantizer": quantizers.WeightQuantizer,
      "WeightNoiseQuantizer": quantizers.WeightNoiseQuantizer,
      "ActivationQuantizer": quantizers.ActivationQuantizer,
      "FixedRangeQuantizer": quantizers.FixedRangeQuantizer,
      "InputRangeQuantizer": quantizers.InputRangeQuantizer,
      "BitQuantizeConfig": configs_lib.BitQuantizeConfig,
      "QuantizableMultiHeadAttention":
          attention.QuantizableMultiHeadAttention,
      "QuantizableLayerNormalization":
          layer_norm.QuantizableLayerNormalization,
  }
  # After tfmot's objects, so it overrides tfmot's QuantizeLayer.
  kqreg_objects = {"QuantizeLayer": QuantizeLayer,
                   "QuantizeWrapperV2": QuantizeWrapperV2}
  merged = {}
  for scope_objects in _tfmot_keras.quantize_scope().custom_objects:
    merged.update(scope_objects)
  merged.update(objects)
  merged.update(kqreg_objects)
  for extra in args:
    merged.update(extra)
  return _QuantizeScope(merged)
