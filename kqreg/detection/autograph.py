"""keras-cv's detection code, traced as written rather than autograph-converted.

TensorFlow's autograph converts every Python function a `tf.function` or a
`tf.data` map calls, unless its module is TensorFlow's or Keras's own.
keras-cv 0.9's boxes, YOLOv8 label assignment, CIoU loss and non-max
suppression are written for Keras 3's backends, JAX and PyTorch included,
which have no autograph; `keras_core`, which keras-cv calls on the Keras 2
path, is the code TensorFlow already exempts as `keras`. Unconverted, a
Python branch on a tensor would fail at trace time
(`OperatorNotAllowedInGraphError`), not change a result: every detection
test traces them this way. Measured once (2-core Intel VM): converting took
5.6 s of a one-epoch float YOLOv8-xs run with them, 1.4 s without.
"""

from __future__ import annotations

from kqreg import _tfmot

__all__ = ["KERAS_CV_MODULES", "trace_keras_cv_as_written"]

KERAS_CV_MODULES = (
    "keras_core",
    "keras_cv.src.backend",
    "keras_cv.src.bounding_box",
    "keras_cv.src.layers.object_detection.non_max_suppression",
    "keras_cv.src.losses.ciou_loss",
    "keras_cv.src.models.object_detection.yolo_v8",
)
"""The modules `trace_keras_cv_as_written` exempts (and their submodules):
those a YOLOv8 detector's training, evaluation and export convert, and no
others (keras-cv's other models and its preprocessing layers keep
TensorFlow's default; some of them are TensorFlow-only code)."""


def trace_keras_cv_as_written() -> None:
  """Exempts `KERAS_CV_MODULES` from autograph in this process (idempotent).

  `build_detector` and the detection `pipeline` call it, so every detector
  kqreg builds or feeds traces keras-cv's code unconverted.
  """
  _tfmot.exempt_from_autograph(*KERAS_CV_MODULES)
