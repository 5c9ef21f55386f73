"""Quantization-aware training: policies, quantizers, layer families, the rewrite.

  policy       `BitPolicy`: "w4a8,first=w8a8" -> bits per layer (no Keras)
  grid         bit ranges, level counts and TensorFlow's nudged grid (no Keras)
  quantizers   weight, noise-twin, activation, input- and fixed-range quantizers
  families     which layers quantize, and how (`LAYER_FAMILIES`)
  attention    MultiHeadAttention as TFLite's int8 kernels compute it
  scalar_op    `x + c`, `x * c` (tf ops on a number) as a layer
  depthwise_bn a BatchNormalization TFLite runs as an int8 depthwise conv
  layer_norm   a LayerNormalization whose every op TFLite runs in int8
  rewrites     graph rewrites before quantizing (nested models, TF ops)
  transform    `plan`, `annotate`, `quantize`: the one pass over the graph
  layers       kqreg's tfmot wrapper classes and `quantize_scope`
  scheme       `QuantizeScheme` for tfmot's own `quantize_apply`
  introspect   `QuantizedWeight`: a QAT model's kernels and their grids; its
               float counterpart
  ranges       freezing activation ranges
  profiles     bits and bytes per layer, `summary`
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.qat.attention import QuantizableMultiHeadAttention
from kqreg.qat.families import (LAYER_FAMILIES, BitQuantizeConfig, LayerFamily,
                                config_for_layer, family_of)
from kqreg.qat.introspect import (QuantizedWeight, float_counterpart,
                                  is_quantized, quantized_weights)
from kqreg.qat.layers import QuantizeLayer, QuantizeWrapperV2, quantize_scope
from kqreg.qat.policy import FLOAT, BitPolicy, Bits, PolicyError
from kqreg.qat.transform import (QuantizationPlan, annotate, plan, quantize,
                                quantize_annotate_layer)
from kqreg.qat.quantizers import (ActivationQuantizer, FixedRangeQuantizer,
                                  InputRangeQuantizer, WeightNoiseQuantizer,
                                  WeightQuantizer)
from kqreg.qat.ranges import (FreezeActivationRanges, freeze_activation_ranges,
                              moving_average_quantizers)
from kqreg.qat.rewrites import QuantizeError, flatten_nested, tf_ops_as_layers
from kqreg.qat.depthwise_bn import DepthwiseBatchNormalization
from kqreg.qat.layer_norm import QuantizableLayerNormalization
from kqreg.qat.scalar_op import ScalarOp
from kqreg.qat.scheme import QuantizeScheme
from kqreg.qat.profiles import LayerProfile, ModelProfile, profile, summary

__all__ = [
    # Policies
    "FLOAT", "BitPolicy", "Bits", "PolicyError",
    # Quantizing a model
    "QuantizationPlan", "QuantizeError", "annotate", "flatten_nested", "plan",
    "quantize", "tf_ops_as_layers",
    # Quantizers and layer families
    "ActivationQuantizer", "BitQuantizeConfig", "DepthwiseBatchNormalization",
    "FixedRangeQuantizer",
    "InputRangeQuantizer", "LAYER_FAMILIES", "LayerFamily",
    "QuantizableLayerNormalization", "QuantizableMultiHeadAttention",
    "ScalarOp", "WeightNoiseQuantizer",
    "WeightQuantizer", "config_for_layer", "family_of",
    # tfmot plumbing
    "QuantizeLayer", "QuantizeScheme", "QuantizeWrapperV2",
    "quantize_annotate_layer", "quantize_scope",
    # Reading a QAT model
    "LayerProfile", "ModelProfile", "QuantizedWeight", "float_counterpart",
    "is_quantized", "profile", "quantized_weights", "summary",
    # Ranges
    "FreezeActivationRanges", "freeze_activation_ranges",
    "moving_average_quantizers",
]
