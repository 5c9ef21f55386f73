"""Annotate and quantize any Sequential or Functional Keras model by a `BitPolicy`.

`quantize(model, "w4a8,first=w8a8")` is the one call: it flattens nested
Functional sub-models (tfmot refuses them), resolves the policy layer by
layer, splits a SeparableConv2D with quantized activations into
DepthwiseConv2D + 1x1 Conv2D (as tfmot's 8-bit scheme does, so TFLite gets
the range between them; both halves take the layer's bits), places activation quantizers where TFLite will fuse ops (after
Conv/Dense + BatchNormalization + ReLU chains), and wraps each planned
layer in tfmot's `QuantizeWrapperV2` with kqreg's `QuantizeConfig`.

It builds, in one pass over the graph, the model tfmot's `quantize_apply`
builds from `annotate`'s model with `kqreg.qat.QuantizeScheme` (tested).
Only what the policy names is quantized: unlike tfmot's default 8-bit scheme
no 8-bit input or output quantizer is added behind your back, so a
weight-only policy (`w4`) really leaves every activation float.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Dict, List, Optional, Union

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg import _tfmot
from kqreg.qat import families as configs_lib
from kqreg.qat.rewrites import (FUSED_ACTIVATIONS, _fresh_inputs,
                                _integer_friendly, _run_graph,
                                _split_activations, _split_separable,
                                _swap_layers, flatten_nested,
                                tf_ops_as_layers, unfused_activation)
from kqreg.qat import policy as policy_lib
from kqreg.qat.layers import QuantizeLayer, QuantizeWrapperV2, quantize_scope
from kqreg.qat import quantizers

__all__ = [
    "QuantizationPlan",
    "plan",
    "annotate",
    "quantize",
    "quantize_annotate_layer",
]

_tfmot_keras = _tfmot.tfmot_keras


def quantize_annotate_layer(layer: tf_keras.layers.Layer, quantize_config=None
                            ) -> tf_keras.layers.Layer:
  """tfmot's annotation of one layer, for tfmot's own `quantize_apply` path.

  `quantize` does not need it; `annotate` calls it for every planned layer.

  Example:
  >>> import tf_keras
  >>> wrapped = quantize_annotate_layer(tf_keras.layers.Dense(2))
  >>> type(wrapped).__name__
  'QuantizeAnnotate'
  """
  return _tfmot_keras.quantize_annotate_layer(layer, quantize_config)

# Ops TFLite fuses into the preceding Conv/Dense/BN: no quantizer in between.
# Other activations (swish, sigmoid, ...) are ops of their own whose integer
# kernels need a range on their input.
_FUSABLE = (tf_keras.layers.BatchNormalization, tf_keras.layers.ReLU,
            tf_keras.layers.Activation)


def _fuses_into_next(layer, consumers) -> bool:
  """True if `layer`'s output feeds only an op TFLite fuses it with."""
  following = consumers.get(layer.name, [])
  if len(following) != 1 or not isinstance(following[0], _FUSABLE):
    return False
  if isinstance(following[0], tf_keras.layers.Activation):
    name = getattr(following[0].activation, "__name__", "")
    if name not in FUSED_ACTIVATIONS:
      return False
  if isinstance(layer, tf_keras.layers.BatchNormalization):
    return not isinstance(following[0], tf_keras.layers.BatchNormalization)
  return True


@dataclasses.dataclass
class QuantizationPlan:
  """What `annotate` will do to each layer, decided before touching the model.

  Attributes:
    model: the flat model the plan refers to.
    configs: layer name -> its `QuantizeConfig`.
    bits: layer name -> its resolved `policy.Bits` (quantized layers only).
    left_float: names of layers with weights or arithmetic that the policy
      would quantize but kqreg has no family for; they stay float.
    input_bits: bits of the input quantizer, None for float inputs. Integer
      inputs (token ids) never get one: they pass through as they are.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> the_plan = kqreg.qat.plan(model, "w4")
  >>> {name: str(bits) for name, bits in the_plan.bits.items()}  # doctest: +ELLIPSIS
  {'dense...': 'w4'}
  >>> the_plan.input_bits is None, the_plan.left_float
  (True, [])
  """
  model: tf_keras.Model
  configs: Dict[str, object]
  bits: Dict[str, policy_lib.Bits]
  left_float: List[str]
  input_bits: Optional[int]


def plan(model: tf_keras.Model,
         policy: Union[str, policy_lib.BitPolicy],
         *,
         per_channel: Optional[bool] = None,
         symmetric: bool = True,
         narrow_range: bool = True,
         integer_attention: bool = True,
         integer_layer_norm: bool = True) -> QuantizationPlan:
  """Resolves `policy` on `model` into one config per quantized layer.

  The policy is resolved on `model`'s own layers; `x + a` tf ops are then
  rebuilt as Add layers and arithmetic with a number (`x * c`) as ScalarOp
  layers (`tf_ops_as_layers`, new names `add_0`, `scalar_multiply_0`, ...)
  with the default bits (or a class key's: `Add=w8a8`); a SeparableConv2D with
  activation bits is then split into `<name>_depthwise` (DepthwiseConv2D,
  output quantized) and `<name>` (1x1 Conv2D), both with its bits, in the
  plan's model. With activation bits, a MultiHeadAttention becomes a
  `QuantizableMultiHeadAttention`, a LayerNormalization over the last axis a
  `QuantizableLayerNormalization` and a Dense on a sequence an EinsumDense,
  of the same names and weights (the same functions, which TFLite runs in
  integers).

  Args:
    model: Sequential or Functional model, nested sub-models allowed.
    policy: a `BitPolicy` or its string, e.g. "w4a8,first=w8a8".
    per_channel: None keeps each family's default (per-channel for conv).
    symmetric: symmetric weight ranges.
    narrow_range: weight grids without their lowest level.
    integer_attention: with activation bits, swap MultiHeadAttention for
      `QuantizableMultiHeadAttention` where it can (`attention.swappable`;
      the file runs it in int8); False keeps Keras's layer (its scores and
      softmax run in float in the file, which XNNPACK ran faster on a
      2-core VM).
    integer_layer_norm: with activation bits, swap a LayerNormalization
      over the last axis for `QuantizableLayerNormalization` (the file runs
      it in int8); False keeps Keras's layer (float in the file, which ran
      faster on the same VM, with XNNPACK and without).

  Raises:
    QuantizeError: the model is subclassed or unbuilt.
    PolicyError: the policy is malformed or names layers the model lacks.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> the_plan = kqreg.qat.plan(model, "w4a8")
  >>> len(the_plan.configs), the_plan.input_bits
  (1, 8)
  """
  policy = policy_lib.BitPolicy.parse(policy)
  flat = flatten_nested(model)
  layers = [l for l in flat.layers
            if not isinstance(l, tf_keras.layers.InputLayer)]
  policy.check_against(layers)
  # `x + a` of two same-shaped tensors as an Add layer and `x * c` as a
  # ScalarOp, so the policy reaches them (a residual attention block's add,
  # MobileNetV3's hard sigmoid). Concats and repeats stay as the caller left
  # them (`build_detector` keeps its head's concats).
  rewritten = tf_ops_as_layers(flat, keep=_concat_or_repeat)
  if rewritten is not flat:
    flat = rewritten
    layers = [l for l in flat.layers
              if not isinstance(l, tf_keras.layers.InputLayer)]
  weighted = [l for l in layers
              if (configs_lib.family_of(l) or configs_lib.LayerFamily(
                  object)).weighted]
  first = weighted[0].name if weighted else None
  last = weighted[-1].name if weighted else None
  resolved = {layer.name: policy.bits_for(layer, is_first=layer.name == first,
                                          is_last=layer.name == last)
              for layer in layers}
  first_bits = (policy.bits_for(flat.get_layer(first), is_first=True)
                if first is not None else None)
  # A separable conv with quantized activations becomes its two halves, each
  # with the bits the policy gave the layer (so names and classes still
  # select it).
  split = [layer.name for layer in layers
           if isinstance(layer, tf_keras.layers.SeparableConv2D) and
           resolved[layer.name].activation is not None]
  if split:
    flat = _split_separable(flat, split)
    layers = [l for l in flat.layers
              if not isinstance(l, tf_keras.layers.InputLayer)]
    resolved.update({f"{name}_depthwise": resolved[name] for name in split})
  # So is a convolution with an activation TFLite does not fuse into it:
  # the conv, then an Activation layer with its bits.
  unfused = [layer.name for layer in layers
             if unfused_activation(layer) is not None and
             resolved[layer.name].activation is not None]
  if unfused:
    flat, activations = _split_activations(flat, unfused)
    layers = [l for l in flat.layers
              if not isinstance(l, tf_keras.layers.InputLayer)]
    resolved.update({activations[name]: resolved[name] for name in unfused})
  # With quantized activations, layers the converter would keep float are
  # rebuilt as the same function in a form it runs in integers (attention
  # with ranges on its scores and probabilities, a LayerNormalization op by
  # op with a range between any two, a Dense on a sequence as an
  # EinsumDense, a BatchNormalization no conv folds into as a depthwise
  # conv at inference), same names and weights.
  swaps = {layer.name: make for layer in layers
           if resolved[layer.name].activation is not None
           for make in [_integer_friendly(flat, layer, integer_attention,
                                          integer_layer_norm)]
           if make is not None}
  if swaps:
    flat = _swap_layers(flat, swaps)
    layers = [l for l in flat.layers
              if not isinstance(l, tf_keras.layers.InputLayer)]
  consumers = _tfmot.graph_consumers(flat)
  configs, bits_by_name, left_float = {}, {}, []
  for layer in layers:
    bits = resolved[layer.name]
    family = configs_lib.family_of(layer)
    if family is None:
      if not (bits.is_float or
              isinstance(layer, configs_lib.GRID_PRESERVING)):
        left_float.append(layer.name)
      continue
    activation_bits = bits.activation
    if family.weighted:
      if bits.is_float:
        continue
    elif activation_bits is None:
      continue  # Nothing to quantize in a layer without weights.
    fused = activation_bits is not None and _fuses_into_next(layer, consumers)
    configs[layer.name] = configs_lib.config_for_layer(
        layer,
        weight_bits=bits.weight,
        weight_noise=bits.noise,
        activation_bits=activation_bits,
        per_channel=per_channel,
        symmetric=symmetric,
        narrow_range=narrow_range,
        quantize_output=False if fused else None)
    bits_by_name[layer.name] = bits
  input_bits = first_bits.activation if first_bits is not None else None
  if not any(_is_float_input(x) for x in flat.inputs):
    input_bits = None  # token ids: nothing to quantize at the input
  return QuantizationPlan(flat, configs, bits_by_name, left_float, input_bits)


def _concat_or_repeat(layer, input_layers) -> bool:
  del input_layers
  return getattr(layer, "symbol", None) in ("concat", "repeat")


def _is_float_input(tensor) -> bool:
  return tensor.dtype.is_floating


def _warn_left_float(left_float: List[str]) -> None:
  if left_float:
    warnings.warn(
        f"kqreg has no quantization family for layers {left_float}; they stay "
        "float. Annotate them with your own QuantizeConfig to quantize them.",
        stacklevel=3)


def annotate(model: tf_keras.Model,
             policy: Union[str, policy_lib.BitPolicy],
             **plan_kwargs) -> tf_keras.Model:
  """Returns `model` with tfmot annotations on the layers `policy` quantizes.

  Args:
    model: Sequential or Functional model, nested sub-models allowed.
    policy: `BitPolicy` or its string.
    **plan_kwargs: `per_channel`, `symmetric`, `narrow_range`,
      `integer_attention`, `integer_layer_norm` (see `plan`).

  Returns:
    An annotated model for `tfmot.quantization.keras.quantize_apply` with
    `kqreg.scheme.QuantizeScheme(plan(model, policy).input_bits)`, which
    gives the model `quantize` gives (`quantize` builds it faster).

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> annotated = kqreg.qat.annotate(model, "w4")
  >>> type(annotated.layers[0]).__name__
  'QuantizeAnnotate'
  """
  return _annotate_plan(plan(model, policy, **plan_kwargs))


def _annotate_plan(the_plan: QuantizationPlan) -> tf_keras.Model:
  _warn_left_float(the_plan.left_float)

  def _wrap(layer):
    config = the_plan.configs.get(layer.name)
    if config is None:
      return layer
    return _tfmot.QuantizeAnnotate(layer, quantize_config=config)

  with quantize_scope():
    return tf_keras.models.clone_model(the_plan.model, clone_function=_wrap)


def quantize(model: tf_keras.Model,
             policy: Union[str, policy_lib.BitPolicy],
             **plan_kwargs) -> tf_keras.Model:
  """Returns a trainable quantization-aware copy of `model` under `policy`.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([
  ...     tf_keras.Input((8, 8, 1)),
  ...     tf_keras.layers.Conv2D(8, 3, activation="relu"),
  ...     tf_keras.layers.Flatten(),
  ...     tf_keras.layers.Dense(10),
  ... ])
  >>> qat = kqreg.quantize(model, "w4a8,last=w8a8")
  >>> [layer.weight_bits for layer in kqreg.qat.profile(qat).layers
  ...  if layer.params]
  [4, 8]

  Args:
    model: Sequential or Functional model (nested sub-models allowed).
    policy: `BitPolicy` or its string. `"fp"` returns `model` unchanged.
    **plan_kwargs: `per_channel`, `symmetric`, `narrow_range`,
      `integer_attention`, `integer_layer_norm` (see `plan`).

  Returns:
    The QAT model (tfmot `QuantizeWrapperV2` layers, weights copied), or
    `model` itself when the policy quantizes nothing.

  Raises:
    QuantizeError: subclassed or unbuilt model.
    PolicyError: malformed policy, or one that names layers the model lacks.
  """
  the_plan = plan(model, policy, **plan_kwargs)
  if not the_plan.configs and not policy_lib.BitPolicy.parse(policy).is_float:
    warnings.warn(
        f"Policy {str(policy)!r} quantizes no layer of {model.name!r}: "
        "nothing quantized, the model stays float.", stacklevel=2)
  _warn_left_float(the_plan.left_float)
  if not the_plan.configs:
    return model
  with quantize_scope():
    return _build_quantized(the_plan)


def _build_quantized(the_plan: QuantizationPlan) -> tf_keras.Model:
  """The plan's model rebuilt once, each planned layer in a QuantizeWrapperV2.

  tfmot's `quantize_apply(annotated, scheme=QuantizeScheme(input_bits))`
  builds the same model, layer for layer and weight for weight (a test
  compares them), from four clones of the graph: a copy, the annotations
  taken off, the input quantizer added, the wrappers put on. One pass takes
  half the time (a YOLOv8-xs detector at w4a8: 8.5-9.9 s -> 4.5-4.9 s on
  2 cores). Every layer is a fresh copy holding the original's weights:
  `the_plan.model` is left untouched.
  """
  source = the_plan.model

  def _copy(layer) -> tf_keras.layers.Layer:
    return layer.__class__.from_config(layer.get_config())

  def _with_weights(copy, layer):
    if layer.weights:
      copy.set_weights(layer.get_weights())
    return copy

  def _wrapped(layer, config, args, kwargs) -> QuantizeWrapperV2:
    copy = _copy(layer)
    copy(*args, **kwargs)  # built on the graph, as tfmot's copy is
    return QuantizeWrapperV2(_with_weights(copy, layer), config,
                             name_prefix="quant_")

  def _input_quantizer() -> QuantizeLayer:
    return QuantizeLayer(quantizers.ActivationQuantizer(the_plan.input_bits))

  if isinstance(source, tf_keras.Sequential):
    model = tf_keras.Sequential(name=source.name)
    model.add(_fresh_inputs(source)[0])
    if the_plan.input_bits is not None and _is_float_input(model.inputs[0]):
      model.add(_input_quantizer())
    for layer in source.layers:
      config = the_plan.configs.get(layer.name)
      if config is None:
        model.add(_copy(layer))
        _with_weights(model.layers[-1], layer)
      else:
        model.add(_wrapped(layer, config, model.outputs, {}))
    return model

  copies: Dict[str, tf_keras.layers.Layer] = {}

  def _stand_in(layer):
    """Calls `layer`'s copy (made on its first call: shared layers stay
    shared)."""
    def call(*args, **kwargs):
      if layer.name in copies:
        return copies[layer.name](*args, **kwargs)
      config = the_plan.configs.get(layer.name)
      if config is not None:
        copies[layer.name] = _wrapped(layer, config, args, kwargs)
        return copies[layer.name](*args, **kwargs)
      copies[layer.name] = copy = _copy(layer)
      outputs = copy(*args, **kwargs)
      _with_weights(copy, layer)
      return outputs
    return call

  inputs = _fresh_inputs(source)
  x = inputs
  if the_plan.input_bits is not None:
    # Integer inputs (token ids) pass through: fake-quant takes floats only.
    x = [_input_quantizer()(i) if _is_float_input(i) else i for i in inputs]
  replace = {layer.name: _stand_in(layer) for layer in source.layers}
  outputs = _run_graph(source, x, replace)
  return tf_keras.Model(inputs, outputs, name=source.name)
