"""TFLite export of a trained YOLOv8 detector, checked end to end in LiteRT.

On a device the network runs and the host decodes. `head_model` is the
detector from image to the head's raw output, shape (batch, anchors,
64 + num_classes): 4 x 16 distribution-focal box logits, then the class
probabilities. `export_detector` writes it with `kqreg.export.export_tflite`
(integer for a quantized detector, float32 for a float one; weight-only
policies such as "w8" and "w4" convert, see `export_detector` for those
with activation bits), runs the file
in ai-edge-litert on validation images, decodes its outputs with the
detector's own keras-cv box decoding and NMS, and scores both the file and
the Keras model with the same mAP on the same images.

Example:

```python
report = kqreg.detection.export_detector(
    detector, "runs/w4a8/model.tflite", calibration_images, val_ds,
    num_classes=5)
report["tflite_map50"], report["keras_map50"]
```
"""

from __future__ import annotations

from typing import Any, Dict

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras
from keras_cv.src.models.object_detection.yolo_v8 import (
    yolo_v8_detector as _yolo)

from kqreg.detection import metrics as metrics_lib
from kqreg.export import (ExportError, export_tflite, report_summary,
                          tflite_predict, verify_tflite)
from kqreg.quantize import is_quantized

__all__ = ["head_model", "export_detector"]

HEAD_OUTPUT = "box_outputs"  # keras-cv's name for the raw head output


def head_model(detector: tf_keras.Model) -> tf_keras.Model:
  """`detector` from image to its raw head output (shares its weights)."""
  try:
    head = detector.get_layer(HEAD_OUTPUT)
  except ValueError as e:
    raise ValueError(
        f"{detector.name!r} has no {HEAD_OUTPUT!r} layer: pass a keras-cv "
        "YOLOV8Detector, e.g. from kqreg.detection.build_detector.") from e
  return tf_keras.Model(detector.inputs, head.output,
                        name=f"{detector.name}_head")


def _images(ds: tf.data.Dataset) -> np.ndarray:
  return np.concatenate([batch["images"].numpy() for batch in ds])


def export_detector(detector: tf_keras.Model, path: str,
                    calibration_images: np.ndarray, val_ds: tf.data.Dataset,
                    num_classes: int) -> Dict[str, Any]:
  """Writes `detector`'s network as .tflite and checks it against Keras.

  Args:
    detector: a trained keras-cv YOLOv8 detector (`build_detector`).
    path: the .tflite file; the export report goes to `path + ".json"`.
    calibration_images: a batch of training images; calibrates 8-bit
      activations of a weight-only detector (e.g. "w4") and sets the input
      range where the detector has no input quantizer.
    val_ds: `data.pipeline` batches the file is checked on (a few dozen
      images: LiteRT runs them one at a time).
    num_classes: classes of the dataset.

  Returns:
    `path`, `size_bytes`, `ratio_to_float` (this file / the float32 TFLite
    of the same network), `weight_types` (storage types of the kernels),
    `float_ops` (ops left float; empty for a fully integer file),
    `max_abs_diff` and `mean_abs_diff` of the raw head outputs in units of
    the output's quantization step (`diff_units`), `tflite_map50`/
    `tflite_map` and `keras_map50`/`keras_map` on the check images,
    `latency_ms_per_example` (single-thread LiteRT) and `examples`.

  Raises:
    ExportError: the network does not convert (a detector trained with
      activation quantizers, e.g. "w4a8", fails on keras-cv's FPN
      concatenations once QAT has given their inputs different ranges), or
      `path` cannot be written.
  """
  head = head_model(detector)
  try:
    report = export_tflite(head, path,
                           representative_data=np.asarray(calibration_images),
                           allow_float=not is_quantized(head))
  except ExportError as e:
    if "same scale" not in str(e):
      raise
    raise ExportError(
        f"{e}. keras-cv's YOLOv8 concatenates feature maps with tf ops that "
        "kqreg cannot give one shared activation range, and TFLite's int8 "
        "concatenation needs its inputs on one scale; QAT trained separate "
        "ranges for them. Train the detector weight-only ('w8', 'w4': 8-bit "
        "activations are calibrated at export) to export it.") from e
  check = verify_tflite(path, head, _images(val_ds))
  channels = _yolo.BOX_REGRESSION_CHANNELS

  def _tflite_predictions(images):
    raw, _ = tflite_predict(path, images.numpy())
    raw = tf.constant(raw, tf.float32)
    return detector.decode_predictions(
        {"boxes": raw[..., :channels], "classes": raw[..., channels:]},
        images)

  tflite_map = metrics_lib.evaluate_map(detector, val_ds, num_classes,
                                        predict=_tflite_predictions)
  keras_map = metrics_lib.evaluate_map(detector, val_ds, num_classes)
  return {
      **report_summary(report),
      "tflite_map50": tflite_map["map50"], "tflite_map": tflite_map["map"],
      "keras_map50": keras_map["map50"], "keras_map": keras_map["map"],
      **{k: check[k] for k in ("max_abs_diff", "mean_abs_diff", "diff_units",
                               "latency_ms_per_example", "examples")},
  }
