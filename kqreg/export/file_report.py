"""The report of an exported .tflite file, read back from its flatbuffer.

`export_tflite` writes it beside the file, at `path + REPORT_SUFFIX`: sizes
and the ratio to float, op counts, one row per weight tensor (stored type,
distinct levels, layer, QAT bits; for kernels the op reading them and why
they are stored so), float ops, latency and notes. `docs/design.md`, "The
export report", lists every field; `report_summary` is what a run's
result.json keeps of it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from typing import Any, Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg.export import converter
from kqreg.export import exportable
from kqreg.export import flatbuffer
from kqreg.export import latency as latency_lib
from kqreg.export import storage as storage_lib
from kqreg.export import verify

__all__ = ["REPORT_SUFFIX", "LATENCY_BUDGET_S", "NOT_TIMED", "build_report",
           "latency_fields", "report_summary", "storage_fields",
           "widening_fields"]


REPORT_SUFFIX = ".json"
"""The report of `path` is written to `path + REPORT_SUFFIX`."""


LATENCY_BUDGET_S = 0.1
"""Seconds of timed invokes per file and thread count in an export report
(at least `latency.MIN_REPEATS` invokes)."""


def _weight_rows(info: Dict[str, Any], checked: exportable.ModelCheck,
                 matched: Optional[Dict[int, Any]]) -> List[Dict[str, Any]]:
  roles = flatbuffer.roles(info)
  if matched is None:
    matched = exportable.kernel_bits(info, checked, roles)
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


def build_report(checked: exportable.ModelCheck, path: str, data: bytes,
                 info: Dict[str, Any], prepared: converter.Prepared,
                 int_io: bool, float_data: Optional[bytes], float_note: str,
                 matched: Optional[Dict[int, Any]] = None) -> Dict[str, Any]:
  """The report of a written file, read back from its flatbuffer (`info`),
  with what `exportable.check_model` read of the Keras model (`checked`).

  `matched`: its parameter tensors matched to their layers, when the writer
  already did (`exportable.kernel_bits`); else matched here.
  """
  quantized = checked.quantized
  float_size = len(float_data) if float_data is not None else None
  report = {
      "path": path,
      "report_path": path + REPORT_SUFFIX,
      "model": checked.name,
      "size_bytes": len(data),
      "float_size_bytes": float_size,
      "float_size_note": float_note,
      "ratio_to_float": (len(data) / float_size) if float_size else None,
      "op_counts": info["op_counts"],
      "weights": _weight_rows(info, checked, matched),
      "float_layers": checked.float_layers,
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
    ops = sorted(set(report["float_ops"]))
    # Layers whose family runs in float whatever the ranges (LayerNorm,
    # attention, an unrolled LSTM) say so; else a range is missing.
    families = checked.family_problems
    report["float_note"] = (
        f"Ops {ops} compute in float: {'; '.join(families)}." if families
        else f"Ops {ops} compute in float: the model has no activation range "
        "before them (e.g. no input quantizer). Pass representative_data= "
        "to calibrate 8-bit ranges for them.")
    warnings.warn(report["float_note"], stacklevel=3)
  return report


def storage_fields(report: Dict[str, Any], info: Dict[str, Any],
                   plan: Dict[int, Tuple[str, str, str]],
                   storage: str) -> Dict[str, Any]:
  """Adds each kernel's op and `storage_reason` to its weight row (`info`:
  the stored file's `flatbuffer.inspect_tflite`)."""
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


NOT_TIMED = {"latency_ms": None, "float_latency_ms": None,
              "latency_ratio_to_float": None, "latency": None,
              "float_latency": None, "op_profile": None}


def latency_fields(path: str, float_data: Optional[bytes],
                    float_file: bool, measure: bool,
                    budget_s: float) -> Dict[str, Any]:
  """Median latency of the file and of its float32 reference in LiteRT.

  A float export (`float_file`) is its own reference (ratio 1); a quantized
  one without `float_data` has none (float fields None).
  """
  if not measure:
    return {**NOT_TIMED, "latency_note": "not measured (latency=False)",
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
    return {**NOT_TIMED, "latency_note": f"could not be measured: {e}",
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


def widening_fields(path: str, qat_model: tf_keras.Model,
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
