"""kqreg: train Keras models at low bit-widths and measure quantization noise.

Importing kqreg selects Keras 2 (tf_keras), which tfmot requires; import it
before TensorFlow or keras-cv.
"""

from kqreg import _keras2  # noqa: F401  (must stay the first import)

from kqreg import configs
from kqreg import noise
from kqreg import policy
from kqreg import quantizers
from kqreg.configs import BitQuantizeConfig, config_for_layer
from kqreg.policy import BitPolicy, Bits, PolicyError
from kqreg.quantize import (QuantizeError, annotate, flatten_nested,
                            freeze_activation_ranges, is_quantized, plan,
                            quantize, quantize_annotate_layer, quantize_scope)
from kqreg.quantizers import (ActivationQuantizer, FixedRangeQuantizer,
                              WeightNoiseQuantizer, WeightQuantizer)
from kqreg.callbacks import FreezeActivationRanges, NoiseAnalysisCallback
from kqreg.export import (ExportError, check_exportable, export_tflite,
                          verify_tflite)
from kqreg.summary import ModelProfile, LayerProfile, profile, summary
from kqreg.layer_sensitivity import sensitivity
from kqreg.bit_allocation import allocate

__version__ = "0.1.0"

__all__ = [
    "ActivationQuantizer",
    "BitPolicy",
    "BitQuantizeConfig",
    "Bits",
    "FixedRangeQuantizer",
    "PolicyError",
    "QuantizeError",
    "WeightNoiseQuantizer",
    "WeightQuantizer",
    "annotate",
    "config_for_layer",
    "configs",
    "flatten_nested",
    "freeze_activation_ranges",
    "FreezeActivationRanges",
    "is_quantized",
    "plan",
    "policy",
    "quantize",
    "quantize_annotate_layer",
    "quantize_scope",
    "quantizers",
    "ExportError",
    "check_exportable",
    "LayerProfile",
    "export_tflite",
    "verify_tflite",
    "NoiseAnalysisCallback",
    "noise",
    "ModelProfile",
    "profile",
    "summary",
    "sensitivity",
    "allocate",
]
