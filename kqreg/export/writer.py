"""Converting a QAT model to an integer .tflite file, in named steps.

`export_tflite` converts a model from `kqreg.quantize` with TFLite's plain
converter (`Optimize.DEFAULT`, no experimental flags), which takes every
weight and activation range from the fake-quant ops QAT learned, then stores
every b-bit kernel on its own QAT grid (`flatbuffer.regrid_weights`). It
writes the file atomically and a report beside it, at `path + ".json"`, read
back from the flatbuffer itself.

What the file holds for kqreg's bit-widths (TF 2.21):

* weights of <= 4 bits are stored as packed INT4 (storage="size", the
  default; "speed" and "auto" put conv kernels in INT8 containers of the
  same values, see `kqreg.export.storage`), 5..8-bit weights as INT8;
  each stored value times its scale is Q(w), the kernel QAT multiplied by
  (for 3, 5, 6 and 7 bits after re-gridding; the converter alone would store
  them up to 0.65 of a QAT step off);
* activations are computed in 8 bits by TFLite's integer kernels. 4-bit
  activation ranges fail to convert, 5..7-bit ones are silently widened to
  256 levels, so they are refused unless `allow_activation_widening=True`;
  9..16-bit activations are refused (`check_exportable` says so before
  training);
* a weight-only model (float activations, e.g. "w4") has no activation ranges:
  it needs `representative_data` to calibrate 8-bit ones.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg.export import converter
from kqreg.export import exportable
from kqreg.export import file_report
from kqreg.export import flatbuffer
from kqreg.export import storage as storage_lib
from kqreg.export.errors import ExportError
from kqreg.io_utils import atomic_write_bytes, atomic_write_json

__all__ = ["export_tflite", "set_storage"]

def _check_path(path: str) -> str:
  if not isinstance(path, (str, os.PathLike)) or not str(path):
    raise ExportError(f"path={path!r}: pass the .tflite file to write.")
  path = os.fspath(path)
  if os.path.isdir(path):
    raise ExportError(
        f"path={path!r} is a directory; pass a file path such as "
        f"{os.path.join(path, 'model.tflite')!r}.")
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise ExportError(
        f"path={path!r}: cannot create its folder {folder!r} "
        f"({e.strerror or e}); pass a path in a writable folder.") from e
  if not os.access(folder, os.W_OK | os.X_OK):
    raise ExportError(
        f"path={path!r}: folder {folder!r} is not writable; pass a path in a "
        "writable folder.")
  return path


def _write(path: str, write_fn, what) -> None:
  try:
    write_fn(path, what)
  except OSError as e:
    raise ExportError(
        f"path={path!r} cannot be written ({e.strerror or e}); pass a path in "
        "a writable folder.") from e


def _store_exact_weights(data: bytes, checked: exportable.ModelCheck,
                         calibrated: bool
                         ) -> Tuple[bytes, Dict[str, float], Dict[int, Any]]:
  """The file with every kernel on its QAT grid, what moved (QAT steps), and
  the parameter tensors matched to their layers (`exportable.kernel_bits`;
  re-gridding and storage keep every tensor's index, so the report reuses
  the match).

  From fake-quant ranges the converter stores a channel's range r at its
  type's peak (7 or 127); when it calibrates (a weight-only model) it
  re-quantizes the kernel from max |Q(w)| instead, i.e. from the levels the
  channel uses.
  """
  info = flatbuffer.inspect_tflite(data)
  grids = {}
  matched = exportable.kernel_bits(info, checked, flatbuffer.roles(info))
  for index, (_, bits, qw) in matched.items():
    if qw is not None:
      grids[index] = (bits, qw.levels_used() if calibrated else None)
  data, moved = flatbuffer.regrid_weights(data, grids)
  names = {t_index: info["tensors"][t_index]["name"] for t_index in moved}
  return data, {names[i]: distance for i, distance in moved.items()}, matched


def export_tflite(qat_model: tf_keras.Model,
                  path: str,
                  *,
                  representative_data=None,
                  int_io: bool = False,
                  allow_activation_widening: bool = False,
                  allow_float: bool = False,
                  float_reference: bool = True,
                  storage: str = storage_lib.DEFAULT_STORAGE,
                  latency: bool = True,
                  latency_budget_s: float = file_report.LATENCY_BUDGET_S
                  ) -> Dict[str, Any]:
  """Writes `qat_model` as an integer .tflite file and reports what it holds.

  The plain converter (`Optimize.DEFAULT`) takes every range from the QAT
  model's fake-quant ops; every kernel is then stored as the Q(w) QAT
  multiplied by (see `flatbuffer.regrid_weights`). The report is also
  written as JSON to `path + ".json"`.

  Args:
    qat_model: a model from `kqreg.quantize` (trained).
    path: the .tflite file to write; missing folders are created.
    representative_data: an array of inputs, or an iterable of input batches
      (or of (x, y) pairs). Used only where ranges are missing: to
      calibrate the activations of a weight-only model (e.g. "w4") with the
      converter; to set an 8-bit input range (min/max of the data) for a model
      `kqreg.quantize` left without an input quantizer (an input feeding a
      Flatten, as in the MLP), which keeps INT4 weight storage where
      converter calibration would re-quantize every weight to INT8; and, for
      a model whose activations get widened, to measure how far the file's
      outputs drift from the Keras model's. Without it such a model exports
      with its first layers float (listed in `float_ops`, with a warning).
    int_io: int8 input and output tensors instead of float32 ones (quantize
      inputs and dequantize outputs with the tensors' scale and zero point).
    allow_activation_widening: export a model with activation quantizers
      below 8 bits anyway; TFLite computes them in 8 bits.
    allow_float: export a model without quantization as float32.
    float_reference: convert the float32 counterpart too, for
      `ratio_to_float`. It is a second conversion (a quarter to a third of
      the export's time); without it `float_size_bytes` and `ratio_to_float`
      are None and `float_size_note` says why.
    storage: how <= 4-bit kernels are stored (`kqreg.export.storage`):
      "size" packs them as INT4 (the smallest file; today's files byte for
      byte); "speed" puts each in the type LiteRT runs fastest (an INT8
      container of the same integers and scale for CONV_2D and
      DEPTHWISE_CONV_2D, whose INT4 filters LiteRT unpacks on every call;
      INT4 for FULLY_CONNECTED); "auto" keeps INT4 only where it is measured
      not slower. Every kernel stays exactly Q(w). Each weight row's
      `storage_reason` says why.
    latency: time the file in LiteRT (`latency.measure_latency`: median
      invoke() at batch 1, 1 thread and all cores, the default XNNPACK
      delegate) and the float32 reference, for `latency_ms`,
      `float_latency_ms` and `latency_ratio_to_float`; False skips timing
      (those fields are None, `latency_note` says so).
    latency_budget_s: seconds of timed invokes per file and thread count.

  Returns:
    The report (also at `path + ".json"`): sizes and the ratio to float, op
    counts, one row per weight tensor (stored type, distinct levels, layer,
    bits; for kernels the op reading them and `storage_reason`), what was
    re-gridded, float ops, latency (and its ratio to float) and notes. `docs/design.md`,
    "The export report", lists every field.

  Raises:
    ExportError: the model is not quantized (and not `allow_float`), has
      activations below 8 bits (and not `allow_activation_widening`) or above
      8 bits, is weight-only without `representative_data`, fails to
      convert, or `path` cannot be written.

  Example:
  >>> import os, tempfile, numpy as np, kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
  ...                              tf_keras.layers.Dense(3, name="dense")])
  >>> qat = kqreg.quantize(model, "w4a8")
  >>> x = np.random.default_rng(0).random((16, 4), dtype=np.float32)
  >>> _ = qat.predict(x, verbose=0)  # sets the activation ranges
  >>> path = os.path.join(tempfile.mkdtemp(), "model.tflite")
  >>> report = kqreg.export_tflite(qat, path, representative_data=x,
  ...                              float_reference=False)
  >>> [(w["type"], w["bits"]) for w in report["weights"] if w["role"] == "weights"]
  [('INT4', 4)]
  """
  checked = exportable.check_model(qat_model, allow_float=allow_float,
                                   allow_widening=allow_activation_widening)
  quantized, widening = checked.quantized, checked.widening
  storage_lib.check_storage(storage)
  path = _check_path(path)
  moved, plan, matched = {}, {}, None
  if quantized:
    prepared = converter.prepare(qat_model, representative_data,
                                 checked.activation_bits)
    data = converter.convert(prepared.model, optimize=True,
                    representative=prepared.representative, int_io=int_io)
    data, moved, matched = _store_exact_weights(
        data, checked, calibrated=prepared.representative is not None)
    data, plan = storage_lib.apply_storage(data, storage)
  else:
    if int_io:
      raise ExportError(
          "int_io=True needs a quantized model; a float export keeps float32 "
          "inputs and outputs: pass int_io=False.")
    prepared = converter.Prepared(qat_model)
    data = converter.convert(qat_model, optimize=False)
  _write(path, atomic_write_bytes, data)
  if not quantized:
    float_data, float_note = data, "the file itself is float32"
  elif float_reference:
    float_data, float_note = converter.float_reference(qat_model)
  else:
    float_data, float_note = None, "not measured (float_reference=False)"
  info = flatbuffer.inspect_tflite(data)
  report = file_report.build_report(checked, path, data, info, prepared,
                                    int_io, float_data, float_note, matched)
  report["regridded"] = moved
  report.update(file_report.storage_fields(report, info, plan, storage))
  report.update(file_report.latency_fields(
      path, float_data if quantized else None, not quantized, latency,
      latency_budget_s))
  if widening:
    report.update(file_report.widening_fields(path, qat_model, widening,
                                              representative_data))
  _write(report["report_path"], atomic_write_json, report)
  return report


def set_storage(path: str, storage: str, *, latency: bool = True,
                latency_budget_s: float = file_report.LATENCY_BUDGET_S
                ) -> Dict[str, Any]:
  """Re-stores the kernels of a file `export_tflite` wrote with
  storage="size" as `storage`, and updates its report beside it.

  For exports through code that passes no `storage` (e.g.
  `kqreg.detection.export_detector`). Integers, scales and biases stay, so
  the file computes the same values; the report's kernel rows (type, bytes,
  op, `storage_reason`), size, `ratio_to_float` and latency are updated (the
  float32 reference's latency is kept from the report).

  Raises:
    ExportError: bad `storage`, a missing file or report, or a file already
      stored another way than "size".

  Example:
  >>> import os, tempfile, numpy as np, kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((8, 8, 1)),
  ...                              tf_keras.layers.Conv2D(4, 3, name="conv"),
  ...                              tf_keras.layers.Flatten(),
  ...                              tf_keras.layers.Dense(3, name="dense")])
  >>> qat = kqreg.quantize(model, "w4a8")
  >>> x = np.random.default_rng(0).random((8, 8, 8, 1), dtype=np.float32)
  >>> _ = qat.predict(x, verbose=0)
  >>> path = os.path.join(tempfile.mkdtemp(), "model.tflite")
  >>> _ = kqreg.export_tflite(qat, path, representative_data=x,
  ...                         float_reference=False, latency=False)
  >>> report = set_storage(path, "speed", latency=False)
  >>> sorted((w["op"], w["type"]) for w in report["weights"]
  ...        if w["role"] == "weights")
  [('CONV_2D', 'INT8'), ('FULLY_CONNECTED', 'INT4')]
  """
  storage_lib.check_storage(storage)
  report_path = os.fspath(path) + file_report.REPORT_SUFFIX
  try:
    with open(path, "rb") as f:
      data = f.read()
    with open(report_path) as f:
      report = json.load(f)
  except (OSError, ValueError) as e:
    raise ExportError(f"path={path!r}: cannot read the file and its report "
                      f"({e}); pass a file written by export_tflite.") from e
  if report.get("storage", "size") != "size":
    raise ExportError(
        f"path={path!r} is stored as {report['storage']!r}; re-export it "
        f"with storage={storage!r}.")
  data, plan = storage_lib.apply_storage(data, storage)
  _write(path, atomic_write_bytes, data)
  info = flatbuffer.inspect_tflite(data)
  stored = {c["name"]: c for c in info["constants"]}
  for row in report["weights"]:
    if row["name"] in stored:
      row["type"] = stored[row["name"]]["type"]
      row["bytes"] = stored[row["name"]]["bytes"]
  report["size_bytes"] = len(data)
  if report.get("float_size_bytes"):
    report["ratio_to_float"] = len(data) / report["float_size_bytes"]
  report.update(file_report.storage_fields(report, info, plan, storage))
  if latency:
    float_ms, float_detail = (report.get("float_latency_ms"),
                              report.get("float_latency"))
    report.update(file_report.latency_fields(path, None, False, True,
                                             latency_budget_s))
    if float_ms and report["latency_ms"]:
      report["float_latency_ms"], report["float_latency"] = (float_ms,
                                                             float_detail)
      report["latency_ratio_to_float"] = {
          k: v / float_ms[k] for k, v in report["latency_ms"].items()
          if k in float_ms}
  else:
    report.update({**file_report.NOT_TIMED,
                   "latency_note": "not measured (latency=False)",
                   "op_profile_note": "not measured (latency=False)"})
  _write(report_path, atomic_write_json, report)
  return report


