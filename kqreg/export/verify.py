"""Running a .tflite file in LiteRT and comparing it with the Keras model."""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tf_keras

from kqreg.export.errors import ExportError
from kqreg.export.flatbuffer import inspect_tflite

__all__ = ["tflite_predict", "verify_tflite", "interpreter"]


def interpreter(path: str, num_threads: int = 1):
  """ai-edge-litert's interpreter on the file at `path` (default kernels).

  Raises:
    ExportError: `path` is missing or not a TFLite file.

  Example:
  >>> import kqreg, numpy as np, os, tempfile, tensorflow as tf
  >>> f = tf.function(lambda x: 2.0 * x, input_signature=[tf.TensorSpec((1, 4))])
  >>> data = tf.lite.TFLiteConverter.from_concrete_functions(
  ...     [f.get_concrete_function()]).convert()
  >>> path = os.path.join(tempfile.mkdtemp(), "double.tflite")
  >>> with open(path, "wb") as file:
  ...   _ = file.write(data)
  >>> runner = kqreg.export.interpreter(path)
  >>> [d["shape"].tolist() for d in runner.get_input_details()]
  [[1, 4]]
  """
  return _interpreter(path, num_threads)[1]


def _output_step(info: Dict[str, Any], output_index: int) -> Optional[float]:
  """Quantization step of the model output (of the int8 tensor behind it)."""
  tensor = info["tensors"][output_index]
  if tensor["scale"] is not None and len(tensor["scale"]) == 1:
    return float(tensor["scale"][0])
  for op in info["ops"]:
    if op["op"] == "DEQUANTIZE" and output_index in op["outputs"]:
      source = info["tensors"][op["inputs"][0]]
      if source["scale"] is not None and len(source["scale"]) == 1:
        return float(source["scale"][0])
  return None


def _interpreter(path: str, num_threads: int):
  # Imported here: only running a file needs the runtime.
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  try:
    with open(path, "rb") as f:
      data = f.read()
    return data, Interpreter(model_content=data, num_threads=num_threads)
  except (OSError, ValueError, RuntimeError) as e:
    raise ExportError(f"path={path!r}: cannot load it as a TFLite file "
                      f"({e}); pass a file written by export_tflite.") from e


def tflite_predict(path: str, x, *,
                   num_threads: int = 1) -> Tuple[np.ndarray, List[float]]:
  """Runs a one-input, one-output .tflite file on `x`, one example at a time.

  As a device would: ai-edge-litert's interpreter with its default kernels,
  int8 inputs and outputs quantized and dequantized with the tensors' own
  scale and zero point, a few warm-up invokes first.

  Args:
    path: the .tflite file.
    x: a numpy batch of inputs (or one example without the batch axis).
    num_threads: interpreter threads (1 for comparable latency).

  Returns:
    (outputs as float64 with the batch axis, seconds per invoke).

  Raises:
    ExportError: `path` is missing or not a TFLite file, has other than one
      input and one output, or `x` is empty.

  Example:
  >>> import kqreg, numpy as np, os, tempfile, tensorflow as tf
  >>> f = tf.function(lambda x: 2.0 * x, input_signature=[tf.TensorSpec((1, 4))])
  >>> data = tf.lite.TFLiteConverter.from_concrete_functions(
  ...     [f.get_concrete_function()]).convert()
  >>> path = os.path.join(tempfile.mkdtemp(), "double.tflite")
  >>> with open(path, "wb") as file:
  ...   _ = file.write(data)
  >>> y, seconds = kqreg.export.tflite_predict(path, np.ones((3, 4), "float32"))
  >>> y.shape, y[0].tolist()
  ((3, 4), [2.0, 2.0, 2.0, 2.0])
  """
  return _predict(_interpreter(path, num_threads)[1], path, x)


def _predict(interpreter, path: str, x) -> Tuple[np.ndarray, List[float]]:
  inputs, outputs = (interpreter.get_input_details(),
                     interpreter.get_output_details())
  if len(inputs) != 1 or len(outputs) != 1:
    raise ExportError(
        f"{path!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
        "kqreg runs single-input, single-output models.")
  x = np.asarray(x)
  if x.ndim == len(inputs[0]["shape"]) - 1:
    x = x[np.newaxis]
  if len(x) == 0:
    raise ExportError("x is empty: pass at least one example.")
  in_detail, out_detail = inputs[0], outputs[0]
  shape = [1] + list(x.shape[1:])
  if list(in_detail["shape"]) != shape:
    interpreter.resize_tensor_input(in_detail["index"], shape)
  interpreter.allocate_tensors()
  in_scale, in_zero = in_detail["quantization"]
  out_scale, out_zero = out_detail["quantization"]
  # An integer input with a scale is a quantized one (int_io); without one
  # it holds ids (token ids for an Embedding) and is passed as it is.
  int_in = np.issubdtype(in_detail["dtype"], np.integer) and bool(in_scale)
  int_out = np.issubdtype(out_detail["dtype"], np.integer)

  def _prepare(example):
    if int_in:
      limits = np.iinfo(in_detail["dtype"])
      q = np.round(example / in_scale + in_zero)
      return np.clip(q, limits.min, limits.max).astype(in_detail["dtype"])
    return example.astype(in_detail["dtype"])

  def _run(example):
    interpreter.set_tensor(in_detail["index"], _prepare(example[np.newaxis]))
    start = time.perf_counter()
    interpreter.invoke()
    elapsed = time.perf_counter() - start
    out = interpreter.get_tensor(out_detail["index"]).astype(np.float64)
    if int_out:
      out = (out - out_zero) * out_scale
    return out[0], elapsed

  for _ in range(min(5, len(x))):  # warm-up: first invokes allocate and pack
    _run(x[0])
  outs, times = [], []
  for example in x:
    out, elapsed = _run(example)
    outs.append(out)
    times.append(elapsed)
  return np.stack(outs), times


def verify_tflite(path: str, qat_model: tf_keras.Model, x, *,
                  num_threads: int = 1, labels=None) -> Dict[str, Any]:
  """Runs the .tflite file and the Keras model on `x` and compares them.

  The file runs through `tflite_predict` (one example at a time, as on a
  device).

  Args:
    path: the .tflite file.
    qat_model: the Keras model it was exported from.
    x: a numpy batch of inputs.
    num_threads: interpreter threads (1 for comparable latency).
    labels: optional integer labels of `x`, to report both accuracies.

  Returns:
    `top1_agreement` (fraction of examples whose argmax matches; None for a
    single output unit), `max_abs_diff` and `mean_abs_diff` of the outputs in
    units of the output's quantization step (`diff_units` "output_step"; "raw"
    when the file has no output scale, e.g. a float file), `output_step`,
    `latency_ms_per_example` (median after warm-up), `examples`, and with
    `labels` `tflite_accuracy` and `keras_accuracy`.

  Raises:
    ExportError: `path` is missing or not a TFLite file, the model has
      other than one input and one output, or either gives NaN or Inf on
      `x` (a diverged model: nothing to compare, and argmax would agree).

  Example:
  >>> import kqreg, tf_keras, numpy as np, os, tempfile
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> qat = kqreg.quantize(model, "w8a8")
  >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
  >>> path = os.path.join(tempfile.mkdtemp(), "model.tflite")
  >>> _ = kqreg.export_tflite(qat, path, representative_data=x)
  >>> check = kqreg.verify_tflite(path, qat, x)
  >>> check["examples"], check["diff_units"], check["max_abs_diff"] <= 1.0
  (8, 'output_step', True)
  """
  data, interpreter = _interpreter(path, num_threads)
  x = np.asarray(x)
  if x.ndim == len(interpreter.get_input_details()[0]["shape"]) - 1:
    x = x[np.newaxis]
  tfl, times = _predict(interpreter, path, x)
  n = len(x)
  out_detail = interpreter.get_output_details()[0]
  out_scale = out_detail["quantization"][0]
  int_out = np.issubdtype(out_detail["dtype"], np.integer)
  keras_out = np.concatenate([
      np.asarray(qat_model(x[i:i + 256], training=False), np.float64)
      for i in range(0, n, 256)]).reshape(tfl.shape)

  for name, out in (("the Keras model", keras_out), ("the file", tfl)):
    if not np.isfinite(out).all():
      raise ExportError(
          f"{name} gives NaN or Inf on {int((~np.isfinite(out)).sum())} of "
          f"{out.size} output values (path={path!r}): a model whose training "
          "diverged cannot be checked; retrain it (lower learning rate, "
          "gradient clipping) and export again.")
  step = (float(out_scale) if int_out and out_scale else
          _output_step(inspect_tflite(data), out_detail["index"]))
  diff = np.abs(tfl - keras_out)
  if step:
    diff = diff / step
  result = {
      "examples": int(n),
      "top1_agreement": None,
      "max_abs_diff": float(diff.max()),
      "mean_abs_diff": float(diff.mean()),
      "diff_units": "output_step" if step else "raw",
      "output_step": step,
      "latency_ms_per_example": 1000.0 * statistics.median(times),
      "num_threads": num_threads,
  }
  if tfl.ndim == 2 and tfl.shape[1] > 1:
    tfl_top, keras_top = tfl.argmax(1), keras_out.argmax(1)
    result["top1_agreement"] = float(np.mean(tfl_top == keras_top))
    if labels is not None:
      labels = np.asarray(labels).reshape(-1)
      result["tflite_accuracy"] = float(np.mean(tfl_top == labels))
      result["keras_accuracy"] = float(np.mean(keras_top == labels))
  return result
