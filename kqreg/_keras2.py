"""Selects Keras 2 (tf_keras) before TensorFlow is first imported.

tfmot works only with tf_keras, and keras-cv builds whichever Keras `tf.keras`
resolves to, so the choice has to be made once, before anything imports
TensorFlow. Every kqreg module imports this one first (through the package
`__init__`); nothing else in kqreg touches `TF_USE_LEGACY_KERAS`.
"""

import os
import sys

_FIX = (
    "Import kqreg before tensorflow/keras_cv, or set TF_USE_LEGACY_KERAS=1 in "
    "the environment before starting Python."
)


def _select_keras2() -> None:
  if "tensorflow" in sys.modules:
    tf = sys.modules["tensorflow"]
    keras_module = getattr(getattr(tf, "keras", None), "__name__", "")
    if not keras_module.startswith("tf_keras"):
      raise ImportError(
          "kqreg needs Keras 2 (tf_keras), but TensorFlow was already "
          f"imported with `tf.keras` = {keras_module or 'Keras 3'}. {_FIX}"
      )
  if "keras_cv" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    raise ImportError(
        "keras_cv was imported before kqreg selected Keras 2, so it builds "
        f"Keras 3 models that tfmot cannot quantize. {_FIX}"
    )
  os.environ["TF_USE_LEGACY_KERAS"] = "1"


_select_keras2()
