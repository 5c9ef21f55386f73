"""Which integer type each kernel of a .tflite file is stored in.

`export_tflite(..., storage=...)` chooses per kernel, from the op that reads
it, between packed INT4 and an INT8 container of the same values:

* "size": today's files, byte for byte: kernels of <= 4 bits packed as INT4
  (two per byte), others INT8.
* "speed": each kernel in the type LiteRT executes fastest. A <= 4-bit
  kernel read by CONV_2D or DEPTHWISE_CONV_2D goes into INT8 with the same
  scale (its integers stay within [-7, 7]: still exactly Q(w)): LiteRT's
  built-in kernels unpack INT4 filters on every call and XNNPACK takes only
  float or int8 filters, so an INT4 conv runs outside XNNPACK. FULLY_CONNECTED
  has native INT4 paths (XNNPACK's qc4w GEMM), measured faster than INT8 at
  large sizes, so it stays INT4.
* "auto": INT4 only where INT4 is measured not slower than INT8
  (`INT4_NOT_SLOWER`); INT8 elsewhere. Both tables agree on ai-edge-litert
  2.3.0 (x86, XNNPACK): they would differ on a runtime whose INT4 path ties
  with INT8 (auto keeps INT4 there, speed takes INT8).

The rewrite needs only the file (`apply_storage`): INT4 values become int8
values, the tensor type INT4 becomes INT8, scales, zero points and biases are
untouched, so the file computes the same quantized graph. LiteRT may run the
two on different kernels (XNNPACK takes INT8 filters, its builtin kernel
unpacks INT4 ones), whose requantization can round differently: outputs
were bit-identical on the zoo cnn and moved by whole output steps on a
YOLOv8 detector (tests/test_export_storage.py, tests/test_detection.py).

`MEASURED` holds the figures the tables were chosen from
(docs/guides/export.md, "Small or fast").
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from kqreg.export import flatbuffer
from kqreg.export.errors import ExportError

__all__ = ["STORAGES", "DEFAULT_STORAGE", "SPEED_TYPES", "INT4_NOT_SLOWER",
           "MEASURED", "check_storage", "plan_storage", "apply_storage",
           "storage_table"]

STORAGES = ("size", "speed", "auto")
DEFAULT_STORAGE = "size"
"""Unchanged files unless asked: docs/guides/export.md, "Small or fast", says
why."""

# The fastest container of a <= 4-bit kernel per op (LiteRT 2.3.0, XNNPACK).
SPEED_TYPES: Mapping[str, str] = {
    "CONV_2D": "INT8",
    "DEPTHWISE_CONV_2D": "INT8",
    "FULLY_CONNECTED": "INT4",
}
# Ops whose INT4 kernels were measured not slower than INT8 ones.
INT4_NOT_SLOWER = frozenset({"FULLY_CONNECTED"})

# Median ms per invoke, batch 1, LiteRT 2.3.0 default resolver (XNNPACK),
# medians of interleaved rounds of `latency.measure_latency` (0.3 s each; 5
# rounds for the convs, 3 for dense) on a shared, loaded 2-core VM,
# 2026-12-06. "int8": the w8a8 file; "int4": the w4a8 file as the converter
# writes it ("size"); "int8_container": the same w4a8 file with its INT4
# kernels widened ("speed"). Untrained models, ranges from one batch.
MEASURED: Mapping[str, Mapping[str, Any]] = {
    "CONV_2D": {
        "model": "2x Conv2D(32, 3x3) on 32x32x16, GAP, Dense(10)",
        "1_thread_ms": {"int8": 0.48, "int4": 0.95, "int8_container": 0.41},
        "2_threads_ms": {"int8": 0.49, "int4": 36.0, "int8_container": 0.45},
    },
    "DEPTHWISE_CONV_2D": {
        "model": "3x DepthwiseConv2D(3x3) on 64x64x32, GAP, Dense(10)",
        "1_thread_ms": {"int8": 0.42, "int4": 9.2, "int8_container": 0.30},
        "2_threads_ms": {"int8": 0.44, "int4": 12.9, "int8_container": 0.43},
    },
    "FULLY_CONNECTED": {
        "model": "Dense 2048-2048-2048-10",
        "1_thread_ms": {"int8": 0.34, "int4": 0.23, "int8_container": 0.30},
        "2_threads_ms": {"int8": 0.41, "int4": 0.24, "int8_container": 0.34},
    },
}

_WHY_INT8 = ("LiteRT unpacks INT4 {op} filters to int8 on every call and "
             "XNNPACK takes int8 filters only (measured {int4} ms as INT4 vs "
             "{int8c} ms in INT8, 1 thread)")
_WHY_INT4 = ("{op} has native INT4 kernels in XNNPACK (measured {int4} ms as "
             "INT4 vs {int8c} ms in INT8, 1 thread)")


def check_storage(storage: Any) -> str:
  """`storage` if it is one of `STORAGES`, else an `ExportError`.

  Example:
  >>> check_storage("speed")
  'speed'
  """
  if storage not in STORAGES:
    raise ExportError(
        f"storage={storage!r}: pass one of {', '.join(map(repr, STORAGES))} "
        "('size': packed INT4 kernels, smallest file; 'speed': each kernel "
        "in the type LiteRT runs fastest; 'auto': INT4 only where it is not "
        "slower).")
  return storage


def storage_table(storage: str) -> Optional[Dict[str, str]]:
  """Op -> container of its <= 4-bit kernels (None for "size": all INT4).

  Ops not listed (TRANSPOSE_CONV, CONV_3D, BATCH_MATMUL: not measured) get
  INT8 under "speed" and "auto".

  Example:
  >>> storage_table("auto")["CONV_2D"], storage_table("auto")["FULLY_CONNECTED"]
  ('INT8', 'INT4')
  >>> storage_table("size") is None
  True
  """
  check_storage(storage)
  if storage == "size":
    return None
  if storage == "speed":
    return dict(SPEED_TYPES)
  return {op: ("INT4" if op in INT4_NOT_SLOWER else "INT8")
          for op in SPEED_TYPES}


def _figures(op: str) -> Dict[str, Any]:
  row = MEASURED.get(op, {}).get("1_thread_ms", {})
  return {"op": op, "int4": row.get("int4", "?"),
          "int8c": row.get("int8_container", "?")}


def plan_storage(info: Dict[str, Any], storage: str
                 ) -> Dict[int, Tuple[str, str, str]]:
  """Tensor index -> (op, stored type, reason) for each integer kernel.

  `info` is `flatbuffer.inspect_tflite` of the file as converted (before
  `apply_storage`). Kernels the converter stored as INT8 stay INT8 (more than
  4 bits, or a weight-only model the converter calibrated); INT4 kernels go
  where `storage` says.
  """
  check_storage(storage)
  table = storage_table(storage)
  roles = flatbuffer.roles(info)
  types = {c["index"]: c["type"] for c in info["constants"]}
  plan: Dict[int, Tuple[str, str, str]] = {}
  for op in info["ops"]:
    if op["op"] not in flatbuffer.WEIGHTED_OPS or len(op["inputs"]) < 2:
      continue
    index = op["inputs"][1]
    if index in plan or roles.get(index) != "weights":
      continue
    stored = types.get(index)
    if stored == "INT8":
      plan[index] = (op["op"], "INT8",
                     "INT8: the converter stored this kernel as INT8 (more "
                     "than 4 bits, or calibrated from representative data)")
    elif stored == "INT4":
      if table is None:
        plan[index] = (op["op"], "INT4",
                       "INT4: storage='size' packs <= 4-bit kernels two per "
                       "byte")
      elif op["op"] not in table:
        plan[index] = (op["op"], "INT8",
                       f"INT8 container (values within [-7, 7], same scale): "
                       f"storage={storage!r}; INT4 {op['op']} was not "
                       "measured and INT8 is never unpacked")
      elif table[op["op"]] == "INT8":
        plan[index] = (op["op"], "INT8",
                       f"INT8 container (values within [-7, 7], same scale): "
                       f"storage={storage!r}; " +
                       _WHY_INT8.format(**_figures(op["op"])))
      else:
        plan[index] = (op["op"], "INT4",
                       f"INT4: storage={storage!r}; " +
                       _WHY_INT4.format(**_figures(op["op"])))
  return plan


def apply_storage(data: bytes, storage: str
                  ) -> Tuple[bytes, Dict[int, Tuple[str, str, str]]]:
  """The file with its kernels stored as `storage` says, and the plan.

  "size" returns `data` itself. Otherwise each INT4 kernel the plan puts in
  INT8 is rewritten as INT8 holding the same integers with the same scale.

  Example:
  >>> import tensorflow as tf
  >>> f = tf.function(lambda x: 2.0 * x, input_signature=[tf.TensorSpec((1, 4))])
  >>> data = tf.lite.TFLiteConverter.from_concrete_functions(
  ...     [f.get_concrete_function()]).convert()
  >>> apply_storage(data, "speed") == (data, {})
  True
  """
  info = flatbuffer.inspect_tflite(data)
  plan = plan_storage(info, storage)
  types = {c["index"]: c["type"] for c in info["constants"]}
  widen = sorted(i for i, (_, stored, _) in plan.items()
                 if stored == "INT8" and types[i] == "INT4")
  if not widen:
    return data, plan
  return flatbuffer.widen_int4(data, widen), plan
