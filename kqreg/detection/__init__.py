"""Object detection for kqreg: quantization-aware keras-cv YOLOv8.

Importing this package registers the offline TFDS builder `kqreg_shapes`
(procedural detection scenes, prepares without network access).

  data      `load_detection`, `pipeline`: TFDS -> keras-cv box dicts
  model     `build_detector`: YOLOv8 with every Conv2D under a bit policy
  metrics   `mean_average_precision`: COCO-style mAP in NumPy
  training  `DetectConfig`, `run`: train, checkpoint, evaluate, result.json
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.detection import shapes  # noqa: F401  (registers kqreg_shapes)
from kqreg.detection.data import (OFFLINE_DETECTION_DATASETS, DetectionInfo,
                                  load_detection, pipeline)
from kqreg.detection.metrics import mean_average_precision
from kqreg.detection.model import (BACKBONES, DetectorError,
                                   QuantizedYOLOV8Detector, build_detector)

__all__ = [
    "BACKBONES",
    "DetectionInfo",
    "DetectorError",
    "OFFLINE_DETECTION_DATASETS",
    "QuantizedYOLOV8Detector",
    "build_detector",
    "load_detection",
    "mean_average_precision",
    "pipeline",
]
