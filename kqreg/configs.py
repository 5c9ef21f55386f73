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
config = kqreg.configs.config_for_layer(layer, weight_bits=4, activation_bits=8)
annotated = kqreg.quantize_annotate_layer(layer, config)
```
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow_model_optimization as tfmot
import tf_keras

from kqreg import quantizers

__all__ = [
    "LayerFamily",
    "LAYER_FAMILIES",
    "BitQuantizeConfig",
    "family_of",
    "config_for_layer",
]

layers = tf_keras.layers
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
  """
  layer_type: type
  weights: Tuple[Tuple[str, str], ...] = ()
  activations: Tuple[str, ...] = ()
  quantize_output: bool = False
  per_channel: bool = False

  @property
  def weighted(self) -> bool:
    return bool(self.weights)


def _output_only(layer_type: type) -> LayerFamily:
  return LayerFamily(layer_type, quantize_output=True)


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
    _output_only(layers.Concatenate),
    _output_only(layers.AveragePooling2D),
    _output_only(layers.GlobalAveragePooling2D),
    _output_only(layers.BatchNormalization),
    # Input scaling (keras-cv's include_rescaling): without a range after it
    # the converter keeps everything up to the next range float.
    _output_only(layers.Rescaling),
)

_FAMILY_BY_TYPE = {family.layer_type: family for family in LAYER_FAMILIES}

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
  """The `LayerFamily` of `layer`, by its class or nearest base class."""
  for cls in type(layer).__mro__:
    family = _FAMILY_BY_TYPE.get(cls)
    if family is not None:
      return family
  return None


def _activation_name(activation) -> str:
  return getattr(activation, "__name__", type(activation).__name__)


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

  Raises:
    ValueError: bits out of range or not integers, or `weight_noise` without
      `weight_bits`.
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
               weight_noise: bool = False):
    self.weights = tuple((str(a), str(layout)) for a, layout in weights)
    self.activations = tuple(str(a) for a in activations)
    self.quantize_output = bool(quantize_output)
    self.weight_bits = quantizers.check_bits(weight_bits, quantizers.WEIGHT_BITS,
                                             "weight_bits")
    self.activation_bits = quantizers.check_bits(
        activation_bits, quantizers.ACTIVATION_BITS, "activation_bits")
    self.per_channel = bool(per_channel)
    self.symmetric = bool(symmetric)
    self.narrow_range = bool(narrow_range)
    self.weight_noise = bool(weight_noise)
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
    return [(getattr(layer, attr), quantizer)
            for attr, quantizer in self._weight_quantizers.items()]

  def get_activations_and_quantizers(self, layer):
    if self._activation_quantizer is None:
      return []
    return [(getattr(layer, attr), self._activation_quantizer)
            for attr in self.activations]

  def set_quantize_weights(self, layer, quantize_weights):
    if len(quantize_weights) != len(self._weight_quantizers):
      raise ValueError(
          f"`set_quantize_weights` on layer {layer.name!r} expected "
          f"{len(self._weight_quantizers)} weights, received "
          f"{len(quantize_weights)}.")
    for attr, weight in zip(self._weight_quantizers, quantize_weights):
      setattr(layer, attr, weight)

  def set_quantize_activations(self, layer, quantize_activations):
    if self._activation_quantizer is None:
      return
    for attr, activation in zip(self.activations, quantize_activations):
      setattr(layer, attr, activation)

  def get_output_quantizers(self, layer):
    if not self.quantize_output or self._activation_quantizer is None:
      return []
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
      quantizer (the layer feeds a BatchNormalization).
    weight_noise: the noise twin of `weight_bits` (policy token `n<b>`).

  Returns:
    The config.

  Raises:
    ValueError: the layer type has no family, or bits are out of range.
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
      if _activation_name(getattr(layer, attr, None)) in
      _QUANTIZE_AWARE_ACTIVATIONS)
  output = family.quantize_output or len(activations) < len(family.activations)
  if quantize_output is not None:
    output = quantize_output
    if not quantize_output:
      activations = ()
  return BitQuantizeConfig(
      weights=family.weights,
      activations=activations,
      quantize_output=output,
      weight_bits=weight_bits if family.weighted else None,
      activation_bits=activation_bits,
      per_channel=family.per_channel if per_channel is None else per_channel,
      symmetric=symmetric,
      narrow_range=narrow_range,
      weight_noise=weight_noise and family.weighted)
