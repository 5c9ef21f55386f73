"""Object detection for kqreg: quantization-aware keras-cv YOLOv8.

Importing this package registers the offline TFDS builders `kqreg_shapes`
(procedural shape scenes) and `kqreg_digit_scenes` (real MNIST digits
composed into scenes); both prepare without network access.

  data           `load_detection`, `pipeline`: TFDS -> keras-cv box dicts
  digit_scenes   the offline builder of real MNIST digits in scenes
  shapes         the offline builder of procedural shape scenes
  model          `build_detector`: YOLOv8 with every Conv2D under a bit policy
  metrics        `mean_average_precision`, `evaluate_map`: COCO-style mAP
  export         `export_detector`: the network as TFLite, mAP checked in LiteRT
  task           `DetectConfig`, `run`: the detection hooks of `kqreg.runs`
  autograph      keras-cv's box, loss and NMS code traced as written
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

# Registers kqreg_digit_scenes and kqreg_shapes with TFDS.
from kqreg.detection import digit_scenes, shapes  # noqa: F401
from kqreg.detection.data import (OFFLINE_DETECTION_DATASETS, DetectionInfo,
                                  load_detection, pipeline)
from kqreg.detection.export import (BOX_OUTPUTS, export_detector, head_model,
                                    join_levels)
from kqreg.detection.metrics import evaluate_map, mean_average_precision
from kqreg.detection.model import (BACKBONES, SHORT_RUN_BN_MOMENTUM,
                                   DetectorError, QuantizedYOLOV8Detector,
                                   build_detector)
from kqreg.detection.task import DetectConfig, run

__all__ = [
    "BACKBONES",
    "BOX_OUTPUTS",
    "DetectConfig",
    "DetectionInfo",
    "DetectorError",
    "OFFLINE_DETECTION_DATASETS",
    "QuantizedYOLOV8Detector",
    "SHORT_RUN_BN_MOMENTUM",
    "build_detector",
    "evaluate_map",
    "export_detector",
    "head_model",
    "join_levels",
    "load_detection",
    "mean_average_precision",
    "pipeline",
    "run",
]
