"""TFLite export of a trained YOLOv8 detector, checked end to end in LiteRT.

On a device the network runs and the host decodes. `head_model` is the
detector from image to the head's raw outputs: per pyramid level
`boxes_p3`, `boxes_p4`, `boxes_p5`, (batch, anchors of the level, 64)
distribution-focal box logits, and `classes`, (batch, anchors, num_classes)
probabilities; `join_levels` concatenates the box logits on the host, as
keras-cv's decoding takes them. `export_detector` writes it with
`kqreg.export.export_tflite` (integer for a quantized detector, float32 for
a float one), runs the file
in ai-edge-litert on validation images, decodes its outputs with the
detector's own keras-cv box decoding and NMS, and scores both the file and
the Keras model with the same mAP on the same images.

Weight-only detectors ("w8", "w4") get 8-bit activation ranges calibrated
on `calibration_images`; detectors trained with activation bits ("w8a8",
"w4a8") take every range from QAT. `build_detector` gives those ranges to
keras-cv's feature-map concatenations, adds and upsampling too (it rebuilds
them as Keras layers, `kqreg.graph.tf_ops_as_layers`); where a concatenation's
inputs trained other ranges than its output, the converter requantizes them
to the output's scale, the rounding QAT simulated.

Example:

```python
report = kqreg.detection.export_detector(
    detector, "runs/w4a8/model.tflite", calibration_images, val_ds,
    num_classes=5)
report["tflite_map50"], report["keras_map50"]
```
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg.detection import metrics as metrics_lib
from kqreg.detection.model import layer_output
from kqreg.export import ExportError, export_tflite, report_summary
from kqreg.qat.introspect import is_quantized

__all__ = ["BOX_OUTPUTS", "head_model", "join_levels", "export_detector"]

_LEVELS = 3  # keras-cv's head: one branch per pyramid level P3, P4, P5
# The box logits of each level are an output of their own. Each level's
# last box convolution trains its own 8-bit range; concatenated in the file,
# the converter would requantize all three onto one scale, a second rounding
# Keras never made (measured on a w4a8 digit-scenes detector: mAP@[.5:.95]
# 0.698 in LiteRT against 0.787 in Keras). Concatenated on the host, after
# each is dequantized with its own scale, the values are the trained ones.
BOX_OUTPUTS = tuple(f"boxes_p{level + 2}" for level in range(1, _LEVELS + 1))


def head_model(detector: tf_keras.Model) -> tf_keras.Model:
  """`detector` from image to its raw head outputs (shares its weights).

  Outputs: `BOX_OUTPUTS` (`boxes_p3`, `boxes_p4`, `boxes_p5`: each level's
  (batch, anchors, 64) distribution-focal box logits, on its own scale in an
  integer file) and `classes` (batch, anchors of all levels, num_classes)
  probabilities (every level's sigmoid is on the same fixed grid, so one
  concatenation loses nothing). `join_levels` turns them into the `boxes`
  and `classes` keras-cv's `decode_predictions` takes. keras-cv concatenates
  boxes and classes into one tensor; in an integer file that tensor would
  get one scale, and the sigmoid's fixed [0, 1) scale would clip every box
  logit.
  """
  boxes, classes = [], []
  for level in range(1, _LEVELS + 1):
    prefix = f"yolo_v8_head_{level}"
    try:
      box = layer_output(detector, f"{prefix}_box_3_conv")
      cls = layer_output(detector, f"{prefix}_classifier")
    except ValueError as e:
      raise ValueError(
          f"{detector.name!r} has no keras-cv YOLOv8 head ({e}): pass a "
          "detector from kqreg.detection.build_detector.") from e
    boxes.append(tf_keras.layers.Reshape((-1, box.shape[-1]))(box))
    classes.append(tf_keras.layers.Reshape((-1, cls.shape[-1]))(cls))
  return tf_keras.Model(
      detector.inputs,
      {**dict(zip(BOX_OUTPUTS, boxes)),
       "classes": tf_keras.layers.Concatenate(axis=1, name="classes")(
           classes)},
      name=f"{detector.name}_head")


def join_levels(outputs: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """`head_model`'s outputs (Keras or a file's, as float) as keras-cv's.

  Example:
    >>> out = {"boxes_p3": np.zeros((1, 4, 64)), "boxes_p4": np.ones((1, 2, 64)),
    ...        "boxes_p5": np.ones((1, 1, 64)), "classes": np.zeros((1, 7, 3))}
    >>> {k: v.shape for k, v in join_levels(out).items()}
    {'boxes': (1, 7, 64), 'classes': (1, 7, 3)}
  """
  return {"boxes": np.concatenate([np.asarray(outputs[k], np.float64)
                                   for k in BOX_OUTPUTS], axis=1),
          "classes": np.asarray(outputs["classes"], np.float64)}


def _litert_run(path: str, images: np.ndarray
                ) -> Tuple[Dict[str, np.ndarray], List[float]]:
  """The file's outputs for `images`, one image at a time, and latencies."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  runner = Interpreter(model_path=path, num_threads=1).get_signature_runner()
  (input_name,) = runner.get_input_details()
  outputs, times = {k: [] for k in (*BOX_OUTPUTS, "classes")}, []
  for i, image in enumerate(np.concatenate([images[:1]] * 3 + [images])):
    start = time.perf_counter()
    out = runner(**{input_name: image[np.newaxis].astype(np.float32)})
    elapsed = time.perf_counter() - start
    if i < 3:  # warm-up: first invokes allocate and pack
      continue
    times.append(elapsed)
    for key in outputs:
      outputs[key].append(np.asarray(out[key], np.float64)[0])
  return join_levels({k: np.stack(v) for k, v in outputs.items()}), times


def export_detector(detector: tf_keras.Model, path: str,
                    calibration_images: np.ndarray, val_ds: tf.data.Dataset,
                    num_classes: int, storage: str = "size") -> Dict[str, Any]:
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
    storage: "size", "speed" or "auto" (`kqreg.export_tflite`'s); the file
      is checked and timed as stored.

  Returns:
    `path`, `size_bytes`, `ratio_to_float` (this file / the float32 TFLite
    of the same network), `weight_types` (storage types of the kernels),
    `float_ops` (ops left float; empty for a fully integer file),
    `tflite_map50`/`tflite_map` and `keras_map50`/`keras_map` on the check
    images, `box_abs_diff`/`class_abs_diff` (mean |LiteRT − Keras| of the
    box logits and of the class probabilities), `latency_ms_per_example`
    (single-thread LiteRT, median) and `examples`.

  Raises:
    ExportError: the network does not convert, or `path` cannot be written.
  """
  head = head_model(detector)
  try:
    report = export_tflite(head, path,
                           representative_data=np.asarray(calibration_images),
                           allow_float=not is_quantized(head), storage=storage)
  except ExportError as e:
    if "same scale" not in str(e):
      raise
    raise ExportError(
        f"{e}. TFLite's int8 concatenation needs one scale for its inputs "
        "and output. `kqreg.detection.build_detector` gives every keras-cv "
        "feature-map concatenation its own 8-bit range; a detector quantized "
        "another way may leave them as tf ops without one: build it with "
        "`build_detector`, or train it weight-only ('w8', 'w4': 8-bit "
        "activations are calibrated at export).") from e

  images = np.concatenate([batch["images"].numpy() for batch in val_ds])
  litert, times = _litert_run(path, images)
  keras = join_levels(head.predict(images, batch_size=32, verbose=0))
  cursor = [0]

  def _tflite_predictions(batch_images):
    # `evaluate_map` walks `val_ds` in the order `images` was read.
    n = int(batch_images.shape[0])
    start, cursor[0] = cursor[0], cursor[0] + n
    return detector.decode_predictions(
        {k: tf.constant(v[start:start + n], tf.float32)
         for k, v in litert.items()}, batch_images)

  tflite_map = metrics_lib.evaluate_map(detector, val_ds, num_classes,
                                        predict=_tflite_predictions)
  keras_map = metrics_lib.evaluate_map(detector, val_ds, num_classes)
  return {
      **report_summary(report),
      "tflite_map50": tflite_map["map50"], "tflite_map": tflite_map["map"],
      "keras_map50": keras_map["map50"], "keras_map": keras_map["map"],
      "box_abs_diff": float(np.abs(litert["boxes"] - keras["boxes"]).mean()),
      "class_abs_diff": float(
          np.abs(litert["classes"] - keras["classes"]).mean()),
      "latency_ms_per_example": 1000.0 * statistics.median(times),
      "examples": int(len(images)),
  }
