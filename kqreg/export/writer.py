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

import dataclasses
import json
import os
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg import _tfmot
from kqreg.export import converter
from kqreg.export import flatbuffer
from kqreg.export import exportable as model_info
from kqreg.export import latency as latency_lib
from kqreg.export import storage as storage_lib
from kqreg.export import verify
from kqreg.export.errors import ExportError, KERNEL_ACTIVATION_BITS
from kqreg.io_utils import atomic_write_bytes, atomic_write_json
from kqreg.qat.introspect import is_quantized

__all__ = ["REPORT_SUFFIX", "export_tflite", "report_summary", "set_storage"]

REPORT_SUFFIX = ".json"
"""The report of `path` is written to `path + REPORT_SUFFIX`."""

LATENCY_BUDGET_S = 0.1
"""Seconds of timed invokes per file and thread count in an export report
(at least `latency.MIN_REPEATS` invokes)."""


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


def _float_file(qat_model: tf_keras.Model) -> Tuple[Optional[bytes], str]:
  """The float32 reference file (for `ratio_to_float` and its latency)."""
  try:
    float_model = model_info.float_counterpart(qat_model)
    return converter.convert(float_model, optimize=False), (
        "float32 TFLite of the same architecture holding the QAT model's "
        "float shadow weights, converted without optimizations")
  except (ExportError, ValueError, KeyError, TypeError) as e:
    # The size ratio is a nicety: a model whose layers cannot be rebuilt
    # from config still exports.
    return None, f"float reference could not be built: {e}"


def _kernel_bits(info: Dict[str, Any], model: tf_keras.Model
                 ) -> Dict[int, Tuple[Optional[str], Optional[int], Any]]:
  """Tensor index -> (Keras layer, QAT bits, `QuantizedWeight`) by name."""
  roles = flatbuffer.roles(info)
  bits_by_wrapper = model_info.weight_bits(model) if is_quantized(model) else {}
  inner_of = {w.name: w.layer.name for w in _tfmot.iter_wrappers(model)}
  wrapper_names = sorted(inner_of, key=len, reverse=True)
  found = {}
  for const in info["constants"]:
    if roles[const["index"]] == "constant":
      continue  # shapes, axes, lookup tables: not parameters
    wrapper = model_info.match_layer(const["name"], wrapper_names)
    qw = None
    if roles[const["index"]] == "weights" and wrapper in bits_by_wrapper:
      candidates = bits_by_wrapper[wrapper]
      named = [q for attr, q in candidates if attr in const["name"]]
      qw = (named or [q for _, q in candidates])[0]
    found[const["index"]] = (inner_of.get(wrapper) if wrapper else None,
                             qw.bits if qw else None, qw)
  return found


def _weight_rows(info: Dict[str, Any], model: tf_keras.Model
                 ) -> List[Dict[str, Any]]:
  roles = flatbuffer.roles(info)
  matched = _kernel_bits(info, model)
  rows = []
  for const in info["constants"]:
    if const["index"] not in matched:
      continue
    layer, bits, _ = matched[const["index"]]
    levels, per_channel, channels = flatbuffer.levels(const)
    rows.append({
        "name": const["name"], "role": roles[const["index"]],
        "type": const["type"], "shape": const["shape"],
        "elements": const["elements"], "bytes": const["bytes"],
        "levels": levels, "levels_per_channel": per_channel,
        "channels": channels, "layer": layer, "bits": bits,
    })
  return rows


def _float_ops(info: Dict[str, Any]) -> List[str]:
  """Ops computing in float: any op but the I/O (de)quantize ops."""
  found = []
  for op in info["ops"]:
    if op["op"] in ("QUANTIZE", "DEQUANTIZE"):
      continue
    types = [info["tensors"][t]["type"] for t in op["inputs"] + op["outputs"]
             if t >= 0 and not info["tensors"][t]["constant"]]
    if "FLOAT32" in types or "FLOAT16" in types:
      found.append(op["op"])
  return found


# ----------------------------------------------------------------------------
# The steps of export_tflite.


def _check_model(qat_model, allow_float: bool) -> bool:
  """Whether `qat_model` is quantized; refuses what cannot be exported."""
  if not isinstance(qat_model, tf_keras.Model):
    raise ExportError(
        f"qat_model must be a tf_keras Model, got {type(qat_model).__name__}; "
        "pass the model `kqreg.quantize` returned.")
  quantized = is_quantized(qat_model)
  if not quantized and not allow_float:
    raise ExportError(
        f"Model {qat_model.name!r} was never quantized (no quantize wrappers): "
        "quantize and train it with `kqreg.quantize(model, 'w8a8')` first, or "
        "pass allow_float=True to export it as float32.")
  return quantized


def _check_layers(qat_model: tf_keras.Model) -> None:
  problems = model_info.layer_problems(qat_model)
  if problems:
    raise ExportError(
        f"TFLite cannot convert {'; '.join(problems)}: quantize those layers "
        "at 5..8 bits with per-tensor ranges (e.g. 'w4a8,Conv2DTranspose="
        "w8a8' with per_channel=False), or keep them float "
        "('skip=<layer>').")


def _check_activation_bits(qat_model: tf_keras.Model,
                           allow_widening: bool) -> Dict[str, int]:
  """{layer: bits} of activations below 8 bits that TFLite will widen."""
  activation_bits = model_info.activation_bits(qat_model)
  wide = {name: bits for name, bits in activation_bits.items()
          if bits > KERNEL_ACTIVATION_BITS}
  if wide:
    listed = ", ".join(f"{name} ({bits}-bit)" for name, bits in wide.items())
    raise ExportError(
        f"Activation quantizers above 8 bits in layers {listed}: kqreg exports "
        "8-bit integer activations only (TFLite's 16x8 mode needs symmetric "
        "16-bit ranges kqreg does not train); train with 8-bit activations "
        "(e.g. 'w4a8') to export.")
  widening = {name: bits for name, bits in activation_bits.items()
              if bits < KERNEL_ACTIVATION_BITS}
  if widening and not allow_widening:
    listed = ", ".join(f"{name} ({bits}-bit)"
                       for name, bits in widening.items())
    raise ExportError(
        f"Activation quantizers below 8 bits in layers {listed}: TFLite's "
        "integer kernels compute 8-bit activations, so 4-bit activations "
        "fail to convert and 5-7-bit ones are widened to 256 levels and the "
        "file's outputs drift from the QAT model's. Train with 8-bit "
        "activations (e.g. 'w4a8'), or pass allow_activation_widening=True "
        "to export anyway.")
  return widening


@dataclasses.dataclass
class _Prepared:
  """The model the converter sees and how its missing ranges were filled."""
  model: tf_keras.Model
  representative: Any = None
  input_range: Optional[List[float]] = None
  used_representative: bool = False


def _prepare(qat_model: tf_keras.Model, representative_data) -> _Prepared:
  """Fills in the activation ranges QAT left missing, from the data."""
  if not model_info.activation_bits(qat_model):
    if representative_data is None:
      raise ExportError(
          f"Model {qat_model.name!r} quantizes weights only (float "
          "activations, e.g. policy 'w4'), so it has no activation ranges "
          "for an integer file: pass representative_data= (a few hundred "
          "training inputs) to calibrate 8-bit activations, or train with "
          "'w4a8'.")
    return _Prepared(qat_model, converter.representative(representative_data,
                                                qat_model),
                     used_representative=True)
  # Without an input quantizer (kqreg.quantize inserts none when the input
  # feeds a Flatten, as in the MLP) the converter keeps every layer before
  # the first activation range float. Converter calibration would fill the
  # range in but re-quantize all weights to INT8, losing INT4 storage, so
  # put an 8-bit input quantizer with the data's range in front instead.
  has_input_range = any(True for _ in _tfmot.iter_quantize_layers(qat_model))
  if has_input_range or representative_data is None:
    return _Prepared(qat_model)
  model, input_range = converter.with_input_quantizer(
      qat_model, converter.first_batch(representative_data, limit=4096))
  return _Prepared(model, input_range=input_range, used_representative=True)


def _store_exact_weights(data: bytes, qat_model: tf_keras.Model,
                         calibrated: bool) -> Tuple[bytes, Dict[str, float]]:
  """The file with every kernel on its QAT grid, and what moved (QAT steps).

  From fake-quant ranges the converter stores a channel's range r at its
  type's peak (7 or 127); when it calibrates (a weight-only model) it
  re-quantizes the kernel from max |Q(w)| instead, i.e. from the levels the
  channel uses.
  """
  info = flatbuffer.inspect_tflite(data)
  grids = {}
  for index, (_, bits, qw) in _kernel_bits(info, qat_model).items():
    if qw is not None:
      grids[index] = (bits, model_info.levels_used(qw) if calibrated else None)
  data, moved = flatbuffer.regrid_weights(data, grids)
  names = {t_index: info["tensors"][t_index]["name"] for t_index in moved}
  return data, {names[i]: distance for i, distance in moved.items()}


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
                  latency_budget_s: float = LATENCY_BUDGET_S
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
  quantized = _check_model(qat_model, allow_float)
  storage_lib.check_storage(storage)
  path = _check_path(path)
  widening, moved, plan = {}, {}, {}
  if quantized:
    _check_layers(qat_model)
    widening = _check_activation_bits(qat_model, allow_activation_widening)
    prepared = _prepare(qat_model, representative_data)
    data = converter.convert(prepared.model, optimize=True,
                    representative=prepared.representative, int_io=int_io)
    data, moved = _store_exact_weights(
        data, qat_model, calibrated=prepared.representative is not None)
    data, plan = storage_lib.apply_storage(data, storage)
  else:
    if int_io:
      raise ExportError(
          "int_io=True needs a quantized model; a float export keeps float32 "
          "inputs and outputs: pass int_io=False.")
    prepared = _Prepared(qat_model)
    data = converter.convert(qat_model, optimize=False)
  _write(path, atomic_write_bytes, data)
  if not quantized:
    float_data, float_note = data, "the file itself is float32"
  elif float_reference:
    float_data, float_note = _float_file(qat_model)
  else:
    float_data, float_note = None, "not measured (float_reference=False)"
  report = _report(qat_model, path, data, quantized, prepared, int_io,
                   float_data, float_note)
  report["regridded"] = moved
  report.update(_storage_fields(report, data, plan, storage))
  report.update(_latency_fields(path, float_data if quantized else None,
                                not quantized, latency, latency_budget_s))
  if widening:
    report.update(_widening_report(path, qat_model, widening,
                                   representative_data))
  _write(report["report_path"], atomic_write_json, report)
  return report


def _report(qat_model: tf_keras.Model, path: str, data: bytes,
            quantized: bool, prepared: _Prepared, int_io: bool,
            float_data: Optional[bytes], float_note: str) -> Dict[str, Any]:
  """The report of a written file, read back from its flatbuffer."""
  info = flatbuffer.inspect_tflite(data)
  float_size = len(float_data) if float_data is not None else None
  report = {
      "path": path,
      "report_path": path + REPORT_SUFFIX,
      "model": qat_model.name,
      "size_bytes": len(data),
      "float_size_bytes": float_size,
      "float_size_note": float_note,
      "ratio_to_float": (len(data) / float_size) if float_size else None,
      "op_counts": info["op_counts"],
      "weights": _weight_rows(info, qat_model),
      "float_layers": model_info.float_layers(qat_model),
      "float_ops": _float_ops(info),
      "activation_widening": {},
      "int_io": bool(int_io),
      "float_export": not quantized,
      "representative_data_used": prepared.used_representative,
      "tensorflow": tf.__version__,
  }
  if prepared.input_range is not None:
    report["input_range_calibrated"] = prepared.input_range
  if report["float_ops"] and quantized:
    report["float_note"] = (
        f"Ops {sorted(set(report['float_ops']))} compute in float: the model "
        "has no activation range before them (e.g. no input quantizer). Pass "
        "representative_data= to calibrate 8-bit ranges for them.")
    warnings.warn(report["float_note"], stacklevel=3)
  return report


def _storage_fields(report: Dict[str, Any], data: bytes,
                    plan: Dict[int, Tuple[str, str, str]],
                    storage: str) -> Dict[str, Any]:
  """Adds each kernel's op and `storage_reason` to its weight row."""
  info = flatbuffer.inspect_tflite(data)
  name_of = {i: t["name"] for i, t in enumerate(info["tensors"])}
  found = {name_of[i]: (op, reason) for i, (op, _, reason) in plan.items()}
  for op in info["ops"]:
    if op["op"] in flatbuffer.WEIGHTED_OPS and len(op["inputs"]) > 1:
      found.setdefault(name_of.get(op["inputs"][1]), (op["op"], None))
  for row in report["weights"]:
    if row["role"] == "weights":
      row["op"], reason = found.get(row["name"], (None, None))
      row["storage_reason"] = reason or (
          f"{row['type']}: not an integer kernel (a float export or a layer "
          "kept float)")
  return {"storage": storage,
          "storage_table": storage_lib.storage_table(storage)}


_NOT_TIMED = {"latency_ms": None, "float_latency_ms": None,
              "latency_ratio_to_float": None, "latency": None,
              "float_latency": None, "op_profile": None}


def _latency_fields(path: str, float_data: Optional[bytes],
                    float_file: bool, measure: bool,
                    budget_s: float) -> Dict[str, Any]:
  """Median latency of the file and of its float32 reference in LiteRT.

  A float export (`float_file`) is its own reference (ratio 1); a quantized
  one without `float_data` has none (float fields None).
  """
  if not measure:
    return {**_NOT_TIMED, "latency_note": "not measured (latency=False)",
            "op_profile_note": "not measured (latency=False)"}
  try:
    own = latency_lib.measure_latency(path, budget_s=budget_s)
    reference = own if float_file else None
    if float_data is not None and not float_file:
      with tempfile.TemporaryDirectory(prefix="kqreg-float-") as folder:
        float_path = os.path.join(folder, "float.tflite")
        with open(float_path, "wb") as f:
          f.write(float_data)
        reference = dataclasses.replace(
            latency_lib.measure_latency(float_path, budget_s=budget_s),
            path="float32 reference (not written)")
    timings, profile_note = latency_lib.op_profile(path)
  except (ValueError, OSError) as e:
    return {**_NOT_TIMED, "latency_note": f"could not be measured: {e}",
            "op_profile_note": "not measured"}
  return {
      "latency_ms": {k: t.median_ms for k, t in own.timings.items()},
      "float_latency_ms": (None if reference is None else
                           {k: t.median_ms for k, t in
                            reference.timings.items()}),
      "latency_ratio_to_float": (None if reference is None else
                                 own.ratio_to(reference)),
      "latency": own.as_dict(),
      "float_latency": None if reference is None else reference.as_dict(),
      "latency_note": (
          "median ms per invoke() in LiteRT (ai-edge-litert, default op "
          "resolver: built-in kernels with XNNPACK applied as LiteRT "
          "applies it), batch 1, random inputs of the file's input dtypes "
          "(int8 for int_io); key '1' one thread, 'all' all "
          f"{own.timings['all'].threads if 'all' in own.timings else '?'} "
          "cores; `latency` holds quartiles and repeats"),
      "op_profile": (None if timings is None else
                     [dataclasses.asdict(t) for t in timings]),
      "op_profile_note": profile_note,
  }


def _widening_report(path: str, qat_model: tf_keras.Model,
                     widening: Dict[str, int], representative_data
                     ) -> Dict[str, Any]:
  found = {
      "activation_widening": widening,
      "activation_widening_note": (
          "TFLite computes these activations in 8 bits (256 levels), not at "
          "the bits QAT trained them at; outputs differ from the Keras "
          "model's."),
  }
  probe = converter.first_batch(representative_data)
  if probe is not None:
    check = verify.verify_tflite(path, qat_model, probe)
    found["widening_mismatch"] = {
        k: check[k] for k in ("top1_agreement", "max_abs_diff",
                              "mean_abs_diff", "diff_units", "examples")}
  return found


def set_storage(path: str, storage: str, *, latency: bool = True,
                latency_budget_s: float = LATENCY_BUDGET_S) -> Dict[str, Any]:
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
  report_path = os.fspath(path) + REPORT_SUFFIX
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
  stored = {c["name"]: c for c in flatbuffer.inspect_tflite(data)["constants"]}
  for row in report["weights"]:
    if row["name"] in stored:
      row["type"] = stored[row["name"]]["type"]
      row["bytes"] = stored[row["name"]]["bytes"]
  report["size_bytes"] = len(data)
  if report.get("float_size_bytes"):
    report["ratio_to_float"] = len(data) / report["float_size_bytes"]
  report.update(_storage_fields(report, data, plan, storage))
  if latency:
    float_ms, float_detail = (report.get("float_latency_ms"),
                              report.get("float_latency"))
    report.update(_latency_fields(path, None, False, True, latency_budget_s))
    if float_ms and report["latency_ms"]:
      report["float_latency_ms"], report["float_latency"] = (float_ms,
                                                             float_detail)
      report["latency_ratio_to_float"] = {
          k: v / float_ms[k] for k, v in report["latency_ms"].items()
          if k in float_ms}
  else:
    report.update({**_NOT_TIMED,
                   "latency_note": "not measured (latency=False)",
                   "op_profile_note": "not measured (latency=False)"})
  _write(report_path, atomic_write_json, report)
  return report


def report_summary(report: Dict[str, Any]) -> Dict[str, Any]:
  """The figures of an `export_tflite` report a run's result.json keeps.

  Example:
  >>> report = {"path": "m.tflite", "size_bytes": 900, "ratio_to_float": 0.2,
  ...           "weights": [{"type": "INT4", "role": "weights"},
  ...                       {"type": "INT32", "role": "bias"}],
  ...           "float_ops": []}
  >>> report_summary(report)["weight_types"]
  ['INT4']
  """
  return {
      "path": report["path"],
      "size_bytes": report["size_bytes"],
      "ratio_to_float": report["ratio_to_float"],
      "weight_types": sorted({w["type"] for w in report["weights"]
                              if w["role"] == "weights"}),
      "float_ops": sorted(set(report["float_ops"])),
      "storage": report.get("storage"),
      "latency_ms": report.get("latency_ms"),
      "latency_ratio_to_float": report.get("latency_ratio_to_float"),
  }
