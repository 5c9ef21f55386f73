"""kqreg: train Keras models at low bit-widths and measure quantization noise.

Importing kqreg selects Keras 2 (tf_keras), which tfmot requires; import it
before TensorFlow or keras-cv.

The top level holds a user's path: quantize a model, train it with the noise
recorded, choose bits per layer, export and verify the file. Everything else
lives in its namespace: `kqreg.qat`, `kqreg.noise`, `kqreg.mixed_precision`,
`kqreg.export`, and (imported on demand) `kqreg.runs`, `kqreg.data`,
`kqreg.classification`, `kqreg.detection`, `kqreg.study`.

Example:
>>> import kqreg, tf_keras
>>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
>>> qat = kqreg.quantize(model, "w4a8")
>>> kqreg.qat.is_quantized(qat)
True
"""

from kqreg import _keras2  # noqa: F401  (must stay the first import)

from kqreg import export
from kqreg import mixed_precision
from kqreg import noise
from kqreg import qat
from kqreg.export import ExportError, export_tflite, verify_tflite
from kqreg.mixed_precision.allocator import allocate
from kqreg.mixed_precision.layer_sensitivity import sensitivity
from kqreg.noise.callback import NoiseAnalysisCallback
from kqreg.qat.layers import quantize_scope
from kqreg.qat.policy import BitPolicy, PolicyError
from kqreg.qat.transform import quantize
from kqreg.qat.rewrites import QuantizeError
from kqreg.qat.profiles import summary

__version__ = "0.1.0"

__all__ = [
    # Quantize a model
    "BitPolicy",
    "quantize",
    "quantize_scope",
    "summary",
    # Measure its noise
    "NoiseAnalysisCallback",
    # Choose bits per layer
    "allocate",
    "sensitivity",
    # Export and verify
    "export_tflite",
    "verify_tflite",
    # Errors
    "ExportError",
    "PolicyError",
    "QuantizeError",
    # Namespaces
    "export",
    "mixed_precision",
    "noise",
    "qat",
]
