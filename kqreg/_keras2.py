"""Selects Keras 2 (tf_keras) before TensorFlow is first imported.

tfmot works only with tf_keras, and keras-cv builds whichever Keras `tf.keras`
resolves to, so the choice has to be made once, before anything imports
TensorFlow. Every kqreg module imports this one first (through the package
`__init__`); nothing else in kqreg touches `TF_USE_LEGACY_KERAS`.

It also imports tfmot, once, without loading Keras 3 on the way
(`_import_tfmot`).
"""

import importlib.abc
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


class _NoKeras3(importlib.abc.MetaPathFinder):
  """Fails any import of `keras` (Keras 3) at once."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname == "keras" or fullname.startswith("keras."):
      raise ModuleNotFoundError(
          f"No module named {fullname!r} (kqreg keeps Keras 3 out of "
          "tfmot's import)", name=fullname)
    return None


def _import_tfmot() -> None:
  """Imports tfmot with `keras` unimportable for the duration.

  tfmot 0.8.1's pruning registry tries `from keras.engine import
  base_layer`, which loads all of Keras 3 (1.4 s of each process's start)
  only to fail and fall back to `base_layer = None`. Failing that import at
  once leaves tfmot in the same state and Keras 3 out of the process.
  TensorFlow is imported first, unguarded, so its own lookups are untouched.
  """
  if "tensorflow_model_optimization" in sys.modules:
    return
  import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  guard = _NoKeras3()
  sys.meta_path.insert(0, guard)
  try:
    import tensorflow_model_optimization  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  finally:
    sys.meta_path.remove(guard)


_select_keras2()
_import_tfmot()
