"""Bit-width `QuantizeConfig`s for the layer families of vision models.

One table, `LAYER_FAMILIES`, says for each Keras layer type which weights carry
a kernel, where its output channels are, and whether the layer is quantized at
its output only. One generic config, `BitQuantizeConfig`, reads it; bits are
arguments, never a copy of the config per bit-width, and so is `weight_noise`,
which swaps each weight quantizer for its noise twin
(`quantizers.WeightNoiseQuantizer`, the policy's `n<b>`).

BatchNormalization is handled the way tfmot's default 8-bit scheme handles it
(its Conv2D/Dense + BN [+ ReLU] transforms): the weighted layer before the BN
does not quantize its output; the activation quantizer sits after the BN, or
after the ReLU/Activation that follows it, where TFLite will put the output of
the fused op. The BN itself stays float during training and is folded into the
kernel by the TFLite converter. Folding multiplies each output channel by its
own factor, so only per-channel weight ranges keep the folded kernel on the
b-bit grid (tfmot issue 1131): per-channel is the default for conv layers.

Example:

```python
import kqreg, tf_keras
layer = tf_keras.layers.Conv2D(8, 3)
config = kqreg.qat.config_for_layer(layer, weight_bits=4, activation_bits=8)
annotated = kqreg.qat.quantize_annotate_layer(layer, config)
```
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow_model_optimization as tfmot
import tf_keras

from kqreg.qat import attention
from kqreg.qat import grid
from kqreg.qat import layer_norm
from kqreg.qat import policy as policy_lib
from kqreg.qat import quantizers
from kqreg.qat.scalar_op import ScalarOp

__all__ = [
    "LayerFamily",
    "LAYER_FAMILIES",
    "BitQuantizeConfig",
    "family_of",
    "config_for_layer",
    "GRID_PRESERVING",
    "folds_batch_norm",
]

layers = tf_keras.layers

# A bare policy key (`Dense=w8`) names a tf_keras layer class; the policy
# module itself knows no Keras.
policy_lib.register_layer_classes(
    name for name, obj in vars(tf_keras.layers).items()
    if isinstance(obj, type) and issubclass(obj, tf_keras.layers.Layer))
QuantizeConfig = tfmot.quantization.keras.QuantizeConfig


@dataclasses.dataclass(frozen=True)
class LayerFamily:
  """How one layer type is quantized.

  Attributes:
    layer_type: the Keras layer class (subclasses match too).
    weights: `(attribute, channel layout)` for each kernel to quantize; the
      layout is one of `quantizers.CHANNEL_LAYOUTS`.
    activations: activation attributes wrapped by tfmot's quantize-aware
      activation (quantized after relu/linear, before softmax/sigmoid).
    quantize_output: quantize the layer's output (layers without weights).
    per_channel: default for `per_channel` (False for Dense: one range per
      tensor is what TFLite's fully connected kernels handle everywhere).
    export: what `kqreg.export_tflite` makes of the family, as measured
      (TF 2.21, w4a8/w8a8); empty where not measured.
    bounded: `(activation attribute, BOUNDED_ACTIVATIONS key)` for hooks
      whose output interval is fixed (attention probabilities: "softmax"),
      quantized on the grid TFLite fixes for it.
    on_input_range: the output is quantized on its input's range
      (`quantizers.InputRangeQuantizer`), as TFLite's int8 kernel of the op
      keeps its input's scale (average pooling).
    hooks_from_first_batch: the ranges of hook activations (attributes
      without a dot, other than `activation`) start at the first training
      batch's instead of moving there from ±6: a LayerNorm's variance and
      its inverse square root lie far from it, and a chain of ten ranges
      warming up held a short run back.

  A weight or activation attribute may be a dotted path into a sub-layer
  (`"cell.kernel"` of an LSTM, `"_query_dense.kernel"` of a
  MultiHeadAttention): the one wrapper of the composite layer quantizes
  them all.

  Example:
  >>> import kqreg, tf_keras
  >>> family = kqreg.qat.family_of(tf_keras.layers.Dense(2))
  >>> family.layer_type.__name__, family.weights, family.per_channel
  ('Dense', (('kernel', 'last'),), False)
  """
  layer_type: type
  weights: Tuple[Tuple[str, str], ...] = ()
  activations: Tuple[str, ...] = ()
  quantize_output: bool = False
  per_channel: bool = False
  export: str = ""
  bounded: Tuple[Tuple[str, str], ...] = ()
  on_input_range: bool = False
  hooks_from_first_batch: bool = False

  @property
  def weighted(self) -> bool:
    return bool(self.weights)


def _output_only(layer_type: type, export: str = "") -> LayerFamily:
  return LayerFamily(layer_type, quantize_output=True, export=export)


def _on_input_range(layer_type: type) -> LayerFamily:
  return LayerFamily(layer_type, quantize_output=True, on_input_range=True,
                     export=_EXPORT["AveragePooling"])


def resolve(layer, attr: str):
  """`layer`'s attribute `attr`, following a dotted path into sub-layers."""
  for part in attr.split("."):
    layer = getattr(layer, part)
  return layer


def _resolve_or_none(layer, attr: str):
  try:
    return resolve(layer, attr)
  except AttributeError:
    return None


def _assign(layer, attr: str, value) -> None:
  *path, last = attr.split(".")
  for part in path:
    layer = getattr(layer, part)
  setattr(layer, last, value)


_MHA_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense",
                    "_output_dense")


_RECURRENT = ("float when unrolled (unroll=True): the cell's FULLY_CONNECTED, "
              "LOGISTIC, TANH, MUL and ADD run in float on float32 Q(w) "
              "kernels; refused when rolled: the recurrent loop does not "
              "convert (TensorList without a static element shape)")

# What `kqreg.export_tflite` made of each new family (measured, TF 2.21).
_EXPORT = {
    "Conv1D": "integer: CONV_2D on the expanded kernel, stored Q(w) exactly "
              "(per tensor; a per-channel kernel is refused by the converter)",
    "Conv3D": "float: TFLite has no integer CONV_3D; the kernel is stored "
              "as float32 Q(w)",
    "Conv1DTranspose": "hybrid: kernel stored as Q(w) (INT4/INT8), but "
                       "TRANSPOSE_CONV, SQUEEZE and the bias ADD run in float "
                       "(no range between the op and its bias)",
    "Conv3DTranspose": "float: TFLite has no integer CONV_3D_TRANSPOSE; the "
                       "kernel is stored as float32 Q(w)",
    "DepthwiseConv1D": "integer: DEPTHWISE_CONV_2D on the expanded kernel, "
                       "stored Q(w) exactly (per tensor)",
    "SeparableConv1D": "hybrid: both kernels stored as Q(w), but the "
                       "depthwise output has no range, so both halves run in "
                       "float",
    "Embedding": "integer at 5..8 bits: GATHER on the INT8 table, stored "
                 "Q(w) exactly; refused at <= 4 bits (the INT4 table "
                 "converts, but LiteRT's QUANTIZE refuses GATHER's INT4 "
                 "output)",
    "EinsumDense": "integer: FULLY_CONNECTED, stored Q(w) exactly (kernel "
                   "axis last in the output, bias on it)",
    "MultiHeadAttention": "hybrid: the four projection kernels are stored "
                          "as Q(w), but FULLY_CONNECTED, the bias ADDs, "
                          "BATCH_MATMUL and SOFTMAX run in float (no range "
                          "between a projection and its bias, nor on the "
                          "scores); with activation bits kqreg.quantize "
                          "swaps it for QuantizableMultiHeadAttention "
                          "unless integer_attention=False or its inputs are "
                          "not rank 3 with the default attention axis",
    "QuantizableMultiHeadAttention": "integer: FULLY_CONNECTED (bias fused), "
                                     "MUL, BATCH_MATMUL and SOFTMAX in int8, "
                                     "the four kernels stored Q(w) exactly; "
                                     "a mask adds float ops",
    "LSTM": _RECURRENT,
    "GRU": _RECURRENT,
    "Normalization": "hybrid: its (x - mean) / std runs as float SUB and "
                     "MUL (no range between them); its output range keeps "
                     "the layers after it in integers",
    "AveragePooling": "integer: AVERAGE_POOL_2D, which keeps its input's "
                      "scale; the output is quantized on its input's range",
    "LayerNormalization": "float: TFLite decomposes it into MEAN, "
                          "SQUARED_DIFFERENCE, RSQRT, MUL, ADD and runs them "
                          "in float; its output range is kept; with "
                          "activation bits kqreg.quantize swaps it for "
                          "QuantizableLayerNormalization unless "
                          "integer_layer_norm=False or it normalizes over "
                          "other axes than the last",
    "QuantizableLayerNormalization": "integer: MEAN, SQUARED_DIFFERENCE, "
                                     "SUB, ADD, RSQRT and MUL in int8, "
                                     "gamma and beta int8 constants on "
                                     "their trained ranges",
}

# Order matters only between a class and its subclasses: `family_of` walks
# the layer's MRO, so Conv2DTranspose matches before Conv2D.
LAYER_FAMILIES: Tuple[LayerFamily, ...] = (
    LayerFamily(layers.Dense, (("kernel", "last"),), ("activation",)),
    LayerFamily(layers.Conv2D, (("kernel", "last"),), ("activation",),
                per_channel=True),
    # Per tensor: TFLite's converter refuses per-channel transposed-conv
    # kernels ("'tfl.transpose' op has mismatched quantized axes").
    LayerFamily(layers.Conv2DTranspose, (("kernel", "transpose"),),
                ("activation",), per_channel=False),
    LayerFamily(layers.DepthwiseConv2D, (("depthwise_kernel", "depthwise"),),
                ("activation",), per_channel=True),
    LayerFamily(layers.SeparableConv2D, (("depthwise_kernel", "depthwise"),
                                         ("pointwise_kernel", "last")),
                ("activation",), per_channel=True),
    _output_only(layers.Activation),
    _output_only(layers.ReLU),
    _output_only(layers.Add),
    _output_only(layers.Multiply),
    _output_only(ScalarOp),
    _output_only(layers.Concatenate),
    _on_input_range(layers.AveragePooling2D),
    _output_only(layers.GlobalAveragePooling2D),
    _output_only(layers.BatchNormalization),
    # Input scaling (keras-cv's include_rescaling): without a range after it
    # the converter keeps everything up to the next range float.
    _output_only(layers.Rescaling),
    _output_only(layers.Normalization, _EXPORT["Normalization"]),
    # Conv3D per output channel, as Conv2D (a folded BatchNormalization
    # scales whole channels). 1-D convolutions run as 2-D ones on an
    # expanded kernel, whose moved channel axis the converter refuses per
    # channel: one range per tensor.
    LayerFamily(layers.Conv1D, (("kernel", "last"),), ("activation",),
                per_channel=False, export=_EXPORT["Conv1D"]),
    LayerFamily(layers.Conv3D, (("kernel", "last"),), ("activation",),
                per_channel=True, export=_EXPORT["Conv3D"]),
    LayerFamily(layers.Conv1DTranspose, (("kernel", "transpose"),),
                ("activation",), per_channel=False,
                export=_EXPORT["Conv1DTranspose"]),
    LayerFamily(layers.Conv3DTranspose, (("kernel", "transpose"),),
                ("activation",), per_channel=False,
                export=_EXPORT["Conv3DTranspose"]),
    LayerFamily(layers.DepthwiseConv1D, (("depthwise_kernel", "depthwise"),),
                ("activation",), per_channel=False,
                export=_EXPORT["DepthwiseConv1D"]),
    LayerFamily(layers.SeparableConv1D, (("depthwise_kernel", "depthwise"),
                                         ("pointwise_kernel", "last")),
                ("activation",), per_channel=False,
                export=_EXPORT["SeparableConv1D"]),
    # The table, one range per tensor; integer ids pass through unquantized.
    LayerFamily(layers.Embedding, (("embeddings", "last"),),
                quantize_output=True, per_channel=False,
                export=_EXPORT["Embedding"]),
    LayerFamily(layers.EinsumDense, (("kernel", "last"),), ("activation",),
                per_channel=False, export=_EXPORT["EinsumDense"]),
    # One wrapper for the composite layer: the query, key, value and output
    # projections' kernels (EinsumDense sub-layers), one range per tensor,
    # and a range on each projection's output.
    LayerFamily(layers.MultiHeadAttention,
                tuple((f"{p}.kernel", "last") for p in _MHA_PROJECTIONS),
                tuple(f"{p}.activation" for p in _MHA_PROJECTIONS),
                per_channel=False, export=_EXPORT["MultiHeadAttention"]),
    # The same kernels and projection ranges, plus the ranges of the scaled
    # query, scores, probabilities (TFLite's fixed SOFTMAX grid) and context.
    LayerFamily(attention.QuantizableMultiHeadAttention,
                tuple((f"{p}.kernel", "last") for p in _MHA_PROJECTIONS),
                tuple(f"{p}.activation" for p in _MHA_PROJECTIONS) +
                attention.HOOKS,
                per_channel=False,
                export=_EXPORT["QuantizableMultiHeadAttention"],
                bounded=((attention.PROBABILITY_HOOK, "softmax"),)),
    # The cell's input and recurrent kernels (gates concatenated on the last
    # axis), one range per tensor; the sequence output is quantized.
    LayerFamily(layers.LSTM, (("cell.kernel", "last"),
                              ("cell.recurrent_kernel", "last")),
                quantize_output=True, per_channel=False,
                export=_EXPORT["LSTM"]),
    LayerFamily(layers.GRU, (("cell.kernel", "last"),
                             ("cell.recurrent_kernel", "last")),
                quantize_output=True, per_channel=False,
                export=_EXPORT["GRU"]),
    # Both directions' cell kernels (an LSTM, GRU or SimpleRNN each), one
    # range per tensor; the joined sequence output is quantized.
    LayerFamily(layers.Bidirectional, tuple(
        (f"{direction}.cell.{kernel}", "last")
        for direction in ("forward_layer", "backward_layer")
        for kernel in ("kernel", "recurrent_kernel")),
                quantize_output=True, per_channel=False,
                export=_RECURRENT),
    _output_only(layers.LayerNormalization, _EXPORT["LayerNormalization"]),
    # A range on every tensor between two of TFLite's ops, gamma and beta
    # included, and on the output.
    LayerFamily(layer_norm.QuantizableLayerNormalization,
                activations=layer_norm.HOOKS, quantize_output=True,
                export=_EXPORT["QuantizableLayerNormalization"],
                hooks_from_first_batch=True),
    _on_input_range(layers.AveragePooling1D),
    _output_only(layers.AveragePooling3D),
    _output_only(layers.GlobalAveragePooling1D),
    _output_only(layers.GlobalAveragePooling3D),
)

_FAMILY_BY_TYPE = {family.layer_type: family for family in LAYER_FAMILIES}

# Layers that move, select or reshape values without computing new ones: the
# values stay on their input's grid, so they need no quantizer of their own.
GRID_PRESERVING = (
    layers.InputLayer, layers.Flatten,
    layers.Reshape, layers.Dropout,
    layers.SpatialDropout2D, layers.ZeroPadding2D,
    layers.Cropping2D, layers.UpSampling2D,
    layers.Permute, layers.GaussianNoise,
    layers.GaussianDropout, layers.ActivityRegularization,
    # The max of grid values is a grid value on the same range (and TFLite's
    # int8 max pooling requires its input's scale), so no second range.
    layers.MaxPooling2D, layers.GlobalMaxPooling2D,
    # Their 1-D and 3-D forms alike.
    layers.MaxPooling1D, layers.MaxPooling3D,
    layers.GlobalMaxPooling1D, layers.GlobalMaxPooling3D,
    layers.SpatialDropout1D, layers.SpatialDropout3D,
    layers.ZeroPadding1D, layers.ZeroPadding3D,
    layers.Cropping1D, layers.Cropping3D,
    layers.UpSampling1D, layers.UpSampling3D,
)
# Layers the converter folds a BatchNormalization after them into
# (Conv2DTranspose and SeparableConv2D are subclasses of Conv2D).
_FOLDS_BATCH_NORM = (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense)


def folds_batch_norm(layer: tf_keras.layers.Layer) -> bool:
  """True if TFLite's converter folds a BatchNormalization after `layer`
  into it: a conv or dense without activation.

  Example:
  >>> import kqreg, tf_keras
  >>> from kqreg.qat.families import folds_batch_norm
  >>> folds_batch_norm(tf_keras.layers.Conv2D(2, 1))
  True
  >>> folds_batch_norm(tf_keras.layers.Conv2D(2, 1, activation="relu"))
  False
  """
  return (isinstance(layer, _FOLDS_BATCH_NORM) and
          getattr(layer.activation, "__name__", "") == "linear")


# Activations tfmot's QuantizeAwareActivation knows; others are left to an
# output quantizer.
_QUANTIZE_AWARE_ACTIVATIONS = frozenset(
    {"linear", "relu", "swish", "gelu", "softmax", "sigmoid", "tanh"})


def _bounded_activation(layer: tf_keras.layers.Layer) -> Optional[str]:
  """The name of `layer`'s activation if it is an `Activation` layer of one
  of `quantizers.BOUNDED_ACTIVATIONS`, else None."""
  if not isinstance(layer, layers.Activation):
    return None
  name = _activation_name(layer.activation)
  return name if name in quantizers.BOUNDED_ACTIVATIONS else None


def family_of(layer: tf_keras.layers.Layer) -> Optional[LayerFamily]:
  """The `LayerFamily` of `layer`, by its class or nearest base class; a
  `TimeDistributed` layer takes the family of the layer it wraps.

  Example:
  >>> import kqreg, tf_keras
  >>> kqreg.qat.family_of(tf_keras.layers.Conv2D(2, 3)).layer_type.__name__
  'Conv2D'
  >>> kqreg.qat.family_of(tf_keras.layers.Lambda(lambda x: x)) is None
  True
  """
  if isinstance(layer, layers.TimeDistributed):
    inner = family_of(layer.layer)
    return None if inner is None else _time_distributed(inner)
  for cls in type(layer).__mro__:
    family = _FAMILY_BY_TYPE.get(cls)
    if family is not None:
      return family
  return None


def _time_distributed(inner: LayerFamily) -> LayerFamily:
  """The family of a `TimeDistributed(layer)`: `layer`'s, one level down."""
  return dataclasses.replace(
      inner, layer_type=layers.TimeDistributed,
      weights=tuple((f"layer.{attr}", layout) for attr, layout in inner.weights),
      activations=tuple(f"layer.{attr}" for attr in inner.activations),
      bounded=tuple((f"layer.{attr}", kind) for attr, kind in inner.bounded))


def _activation_name(activation) -> str:
  return getattr(activation, "__name__", type(activation).__name__)


def _is_output_activation(attr: str) -> bool:
  """True for the activation attribute whose range is the layer's output's:
  its own `activation`, or a MultiHeadAttention's output projection's (one
  level down in a TimeDistributed)."""
  while attr.startswith("layer."):
    attr = attr[len("layer."):]
  return attr in ("activation", "_output_dense.activation")


@tf_keras.utils.register_keras_serializable(package="kqreg")
class BitQuantizeConfig(QuantizeConfig):
  """Quantizes a layer's weights at `weight_bits` and outputs at `activation_bits`.

  Args:
    weights: `(attribute, channel layout)` pairs of the kernels to quantize.
    activations: activation attributes to quantize (tfmot's quantize-aware
      activation).
    quantize_output: add an output quantizer.
    weight_bits: 2..8, or None for float weights.
    activation_bits: 2..16, or None for float activations (weight-only
      quantization, the setting of the QReg paper).
    per_channel: one weight range per output channel.
    symmetric: symmetric weight range (TFLite requires it for int weights).
    narrow_range: weight grid without its lowest level (TFLite requires it).
    weight_noise: add the noise of `weight_bits` quantization to the weights
      in training instead of quantizing them (`WeightNoiseQuantizer`).
    bounded_activations: `{activation attribute: BOUNDED_ACTIVATIONS key}`
      for activations quantized on a fixed interval (`FixedRangeQuantizer`).
    output_on_input_range: quantize the output on the range of the layer's
      input (`InputRangeQuantizer`), not a range of its own.
    hooks_from_first_batch: hook activations' ranges start at the first
      training batch's (`LayerFamily.hooks_from_first_batch`).

  Raises:
    ValueError: bits out of range or not integers, or `weight_noise` without
      `weight_bits`.

  Example:
  >>> import kqreg
  >>> config = kqreg.qat.BitQuantizeConfig(
  ...     weights=[("kernel", "last")], weight_bits=4, activation_bits=8)
  >>> config.weight_bits, config.activation_bits
  (4, 8)
  """

  def __init__(self,
               weights: Sequence[Sequence[str]] = (),
               activations: Sequence[str] = (),
               quantize_output: bool = False,
               weight_bits: Optional[int] = 8,
               activation_bits: Optional[int] = 8,
               per_channel: bool = True,
               symmetric: bool = True,
               narrow_range: bool = True,
               weight_noise: bool = False,
               bounded_activations: Optional[Dict[str, str]] = None,
               output_on_input_range: bool = False,
               hooks_from_first_batch: bool = False):
    self.weights = tuple((str(a), str(layout)) for a, layout in weights)
    self.activations = tuple(str(a) for a in activations)
    self.quantize_output = bool(quantize_output)
    self.weight_bits = grid.check_bits(weight_bits, grid.WEIGHT_BITS,
                                             "weight_bits")
    self.activation_bits = grid.check_bits(
        activation_bits, grid.ACTIVATION_BITS, "activation_bits")
    self.per_channel = bool(per_channel)
    self.symmetric = bool(symmetric)
    self.narrow_range = bool(narrow_range)
    self.weight_noise = bool(weight_noise)
    self.output_on_input_range = bool(output_on_input_range)
    self.hooks_from_first_batch = bool(hooks_from_first_batch)
    self.bounded_activations = {
        str(a): str(name) for a, name in (bounded_activations or {}).items()}
    unknown = set(self.bounded_activations.values()) - set(
        quantizers.BOUNDED_ACTIVATIONS)
    if unknown:
      raise ValueError(
          f"`bounded_activations` names {sorted(unknown)}; known: "
          f"{sorted(quantizers.BOUNDED_ACTIVATIONS)}.")
    if self.weight_noise and self.weight_bits is None:
      raise ValueError(
          "`weight_noise=True` needs `weight_bits`: it adds the noise of "
          "`weight_bits`-bit quantization. Received: weight_bits=None")
    quantizer_class = (quantizers.WeightNoiseQuantizer if self.weight_noise
                       else quantizers.WeightQuantizer)
    self._weight_quantizers = {
        attr: quantizer_class(
            self.weight_bits, per_axis=self.per_channel,
            symmetric=self.symmetric, narrow_range=self.narrow_range,
            layout=layout)
        for attr, layout in self.weights
    } if self.weight_bits is not None else {}
    self._activation_quantizer = (
        quantizers.ActivationQuantizer(self.activation_bits)
        if self.activation_bits is not None else None)

  def weight_quantizer(self, attr: str) -> Optional[quantizers.WeightQuantizer]:
    """The quantizer of weight attribute `attr`, None if it stays float."""
    return self._weight_quantizers.get(attr)

  def get_weights_and_quantizers(self, layer):
    return [(resolve(layer, attr), quantizer)
            for attr, quantizer in self._weight_quantizers.items()]

  def get_activations_and_quantizers(self, layer):
    if self._activation_quantizer is None:
      return []
    return [(resolve(layer, attr), self._activation_quantizer_of(attr))
            for attr in self.activations]

  def _activation_quantizer_of(self, attr: str):
    """The activation quantizer; one of several in a wrapper (a sub-layer's,
    an attention hook's) names its variables after its attribute, so that
    they stay distinct. A bounded one has a fixed grid and no variables."""
    if attr in self.bounded_activations:
      return quantizers.FixedRangeQuantizer.for_activation(
          self.activation_bits, self.bounded_activations[attr])
    if attr == "activation":
      return self._activation_quantizer
    hook = "." not in attr
    if hook:  # `_score_activation` -> `score`
      prefix = attr.strip("_").removesuffix("_activation")
    else:
      prefix = "_".join(attr.split(".")[:-1]).strip("_")
    return quantizers.PrefixedActivationQuantizer(
        self.activation_bits, prefix,
        from_first_batch=hook and self.hooks_from_first_batch)

  def set_quantize_weights(self, layer, quantize_weights):
    if len(quantize_weights) != len(self._weight_quantizers):
      raise ValueError(
          f"`set_quantize_weights` on layer {layer.name!r} expected "
          f"{len(self._weight_quantizers)} weights, received "
          f"{len(quantize_weights)}.")
    for attr, weight in zip(self._weight_quantizers, quantize_weights):
      _assign(layer, attr, weight)

  def set_quantize_activations(self, layer, quantize_activations):
    if self._activation_quantizer is None:
      return
    for attr, activation in zip(self.activations, quantize_activations):
      _assign(layer, attr, activation)

  def get_output_quantizers(self, layer):
    if not self.quantize_output or self._activation_quantizer is None:
      return []
    if self.output_on_input_range:
      # One per wrapper: it follows the range its own wrapper found.
      return [quantizers.InputRangeQuantizer(self.activation_bits)]
    bounded = _bounded_activation(layer)
    if bounded is not None:
      # The output interval is known: TFLite fixes its grid, and so does QAT.
      return [quantizers.FixedRangeQuantizer.for_activation(
          self.activation_bits, bounded)]
    return [self._activation_quantizer]

  def get_config(self):
    return {
        "weights": [list(w) for w in self.weights],
        "activations": list(self.activations),
        "quantize_output": self.quantize_output,
        "weight_bits": self.weight_bits,
        "activation_bits": self.activation_bits,
        "per_channel": self.per_channel,
        "symmetric": self.symmetric,
        "narrow_range": self.narrow_range,
        "weight_noise": self.weight_noise,
        **({"bounded_activations": dict(self.bounded_activations)}
           if self.bounded_activations else {}),
        **({"output_on_input_range": True}
           if self.output_on_input_range else {}),
        **({"hooks_from_first_batch": True}
           if self.hooks_from_first_batch else {}),
    }

  @classmethod
  def from_config(cls, config):
    return cls(**config)

  def __eq__(self, other):
    return (isinstance(other, BitQuantizeConfig) and
            self.get_config() == other.get_config())

  def __ne__(self, other):
    return not self == other

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"BitQuantizeConfig({args})"


def config_for_layer(layer: tf_keras.layers.Layer,
                     weight_bits: Optional[int] = 8,
                     activation_bits: Optional[int] = 8,
                     per_channel: Optional[bool] = None,
                     symmetric: bool = True,
                     narrow_range: bool = True,
                     quantize_output: Optional[bool] = None,
                     weight_noise: bool = False) -> BitQuantizeConfig:
  """Builds the `BitQuantizeConfig` of `layer` from `LAYER_FAMILIES`.

  Args:
    layer: a Keras layer of a family in `LAYER_FAMILIES`.
    weight_bits: 2..8 or None (float weights).
    activation_bits: 2..16 or None (float activations).
    per_channel: None takes the family's default.
    symmetric: symmetric weight range.
    narrow_range: weight grid without its lowest level.
    quantize_output: None takes the family's default; False drops the output
      quantizer (the layer feeds an op TFLite fuses into its last one, such
      as a BatchNormalization or ReLU); ranges inside the layer stay.
    weight_noise: the noise twin of `weight_bits` (policy token `n<b>`).

  Returns:
    The config.

  Raises:
    ValueError: the layer type has no family, or bits are out of range.

  Example:
  >>> import kqreg, tf_keras
  >>> config = kqreg.qat.config_for_layer(tf_keras.layers.Dense(2), weight_bits=4,
  ...                                      activation_bits=None)
  >>> type(config).__name__, config.weight_bits, config.activation_bits
  ('BitQuantizeConfig', 4, None)
  """
  family = family_of(layer)
  if family is None:
    known = ", ".join(f.layer_type.__name__ for f in LAYER_FAMILIES)
    raise ValueError(
        f"Layer {layer.name!r} of type {type(layer).__name__} has no kqreg "
        f"quantization family (known: {known}). Leave it float, or annotate "
        "it with your own `tfmot.quantization.keras.QuantizeConfig`.")
  activations = tuple(
      attr for attr in family.activations
      if _activation_name(_resolve_or_none(layer, attr)) in
      _QUANTIZE_AWARE_ACTIVATIONS)
  output = family.quantize_output or len(activations) < len(family.activations)
  if quantize_output is not None:
    output = quantize_output
    if not quantize_output:
      # TFLite fuses what follows into the layer's last op: that op's range
      # goes, the ranges inside the layer (a LayerNorm's hooks) stay.
      activations = tuple(a for a in activations
                          if not _is_output_activation(a))
  return BitQuantizeConfig(
      weights=family.weights,
      activations=activations,
      quantize_output=output,
      weight_bits=weight_bits if family.weighted else None,
      activation_bits=activation_bits,
      per_channel=family.per_channel if per_channel is None else per_channel,
      symmetric=symmetric,
      narrow_range=narrow_range,
      weight_noise=weight_noise and family.weighted,
      bounded_activations={attr: name for attr, name in family.bounded
                           if attr in activations},
      output_on_input_range=family.on_input_range and output,
      hooks_from_first_batch=family.hooks_from_first_batch)
