"""Reading and rewriting a .tflite flatbuffer: ops, tensors, weights, levels.

`tf.lite.Interpreter` reports INT4 tensors as int8 and hides packed data; the
flatbuffer (`schema_py_generated`) keeps real storage types, so storage types,
level counts and the weight grid are read here. `regrid_weights` rewrites a
file so that 3-, 5-, 6- and 7-bit kernels are stored on their QAT grid.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, Mapping, Optional, Tuple

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as _schema

from kqreg.export.errors import ExportError

__all__ = ["inspect_tflite", "regrid_weights", "widen_int4", "WEIGHTED_OPS"]

_TYPE_NAMES = {v: k for k, v in vars(_schema.TensorType).items()
               if not k.startswith("_")}
_OP_NAMES = {v: k for k, v in vars(_schema.BuiltinOperator).items()
             if not k.startswith("_")}
_NUMPY_TYPES = {"INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16,
                "INT32": np.int32, "INT64": np.int64, "FLOAT32": np.float32,
                "FLOAT16": np.float16}
# Ops whose input 1 is a weight tensor (filter or matrix), input 2 a bias
# (input 3 for TRANSPOSE_CONV).
WEIGHTED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
                          "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL"})
_FILE_IDENTIFIER = b"TFL3"
# The largest stored magnitude of each integer weight type: the converter
# stores a symmetric range r as INT4 with scale r/(2*7), as INT8 with r/(2*127).
_STORED_PEAK = {"INT4": 7, "INT8": 127}


def _buffer_bytes(model, data: bytes, index: int) -> bytes:
  buf = model.Buffers(index)
  if buf is None:
    return b""
  # Files over 2 GB keep buffers after the flatbuffer (offset > 1).
  if buf.Offset() > 1:
    return data[buf.Offset():buf.Offset() + buf.Size()]
  if buf.DataLength() == 0:
    return b""
  return buf.DataAsNumpy().tobytes()


def _decode(raw: bytes, type_name: str, count: int) -> Optional[np.ndarray]:
  """The stored values of a constant tensor, or None for other types."""
  if type_name == "INT4":
    packed = np.frombuffer(raw, np.uint8)
    # Two values per byte, the first in the low nibble (TFLite's
    # UnpackDenseInt4IntoInt8), sign-extended from 4 bits.
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)
    values = nibbles[:count].astype(np.int8)
    return np.where(values > 7, values - 16, values).astype(np.int8)
  dtype = _NUMPY_TYPES.get(type_name)
  if dtype is None:
    return None
  return np.frombuffer(raw, dtype)[:count]


def _tensor_quantization(tensor) -> Tuple[Optional[np.ndarray],
                                          Optional[np.ndarray], int]:
  q = tensor.Quantization()
  if q is None or q.ScaleLength() == 0:
    return None, None, 0
  return (q.ScaleAsNumpy(), q.ZeroPointAsNumpy() if q.ZeroPointLength()
          else np.zeros(q.ScaleLength(), np.int64), q.QuantizedDimension())


def inspect_tflite(data: bytes) -> Dict[str, Any]:
  """Ops, tensors and constants of a .tflite file, read from its flatbuffer.

  `tf.lite.Interpreter` reports INT4 tensors as int8; the flatbuffer keeps
  their real type and packed data, so storage types and level counts come
  from here.

  Args:
    data: the file's bytes.

  Returns:
    A dict with `ops` (list of {op, inputs, outputs} in execution order, over
    all subgraphs), `op_counts` (op name -> count), `tensors` (list of {name,
    type, shape, constant, scale}) of the main subgraph, `constants` (list of
    {index, name, type, shape, elements, bytes, values, quantized_dimension,
    scales}), `inputs` and `outputs` (tensor indices of the main subgraph).

  Example:
  >>> import kqreg, numpy as np, os, tempfile, tensorflow as tf
  >>> f = tf.function(lambda x: 2.0 * x, input_signature=[tf.TensorSpec((1, 4))])
  >>> data = tf.lite.TFLiteConverter.from_concrete_functions(
  ...     [f.get_concrete_function()]).convert()
  >>> info = kqreg.export.inspect_tflite(data)
  >>> info["op_counts"], len(info["inputs"]), len(info["outputs"])
  ({'MUL': 1}, 1, 1)
  """
  model = _schema.Model.GetRootAsModel(data, 0)
  op_codes = []
  for i in range(model.OperatorCodesLength()):
    code = model.OperatorCodes(i)
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    name = _OP_NAMES.get(builtin, str(builtin))
    if name == "CUSTOM" and code.CustomCode():
      name = f"CUSTOM:{code.CustomCode().decode()}"
    op_codes.append(name)
  ops, counts = [], collections.Counter()
  for s in range(model.SubgraphsLength()):
    subgraph = model.Subgraphs(s)
    for i in range(subgraph.OperatorsLength()):
      op = subgraph.Operators(i)
      name = op_codes[op.OpcodeIndex()]
      counts[name] += 1
      if s == 0:
        ops.append({"op": name,
                    "inputs": [int(t) for t in op.InputsAsNumpy()]
                              if op.InputsLength() else [],
                    "outputs": [int(t) for t in op.OutputsAsNumpy()]
                               if op.OutputsLength() else []})
  subgraph = model.Subgraphs(0)
  tensors, constants = [], []
  for i in range(subgraph.TensorsLength()):
    tensor = subgraph.Tensors(i)
    type_name = _TYPE_NAMES.get(tensor.Type(), str(tensor.Type()))
    shape = ([int(d) for d in tensor.ShapeAsNumpy()]
             if tensor.ShapeLength() else [])
    scales, zero_points, axis = _tensor_quantization(tensor)
    raw = _buffer_bytes(model, data, tensor.Buffer())
    tensors.append({"name": tensor.Name().decode(), "type": type_name,
                    "shape": shape, "constant": bool(raw),
                    "scale": None if scales is None else scales,
                    "zero_point": None if zero_points is None else zero_points})
    if raw:
      count = int(np.prod(shape)) if shape else 1
      constants.append({
          "index": i, "name": tensor.Name().decode(), "type": type_name,
          "shape": shape, "elements": count, "bytes": len(raw),
          "values": _decode(raw, type_name, count),
          "quantized_dimension": axis if scales is not None and
                                 len(scales) > 1 else None,
          "scales": scales,
      })
  return {"ops": ops, "op_counts": dict(sorted(counts.items())),
          "tensors": tensors, "constants": constants,
          "inputs": [int(t) for t in subgraph.InputsAsNumpy()],
          "outputs": [int(t) for t in subgraph.OutputsAsNumpy()]}


def levels(const: Dict[str, Any]) -> Tuple[Optional[int], Optional[int],
                                            Optional[int]]:
  """(distinct values, max distinct per channel, channels) of a constant."""
  values = const["values"]
  if values is None or values.size == 0:
    return None, None, None
  per_tensor = int(np.unique(values).size)
  axis = const["quantized_dimension"]
  if axis is None or not const["shape"]:
    return per_tensor, per_tensor, 1
  shaped = np.moveaxis(values.reshape(const["shape"]), axis, 0)
  shaped = shaped.reshape(shaped.shape[0], -1)
  per_channel = max(int(np.unique(row).size) for row in shaped)
  return per_tensor, per_channel, int(shaped.shape[0])


def roles(info: Dict[str, Any]) -> Dict[int, str]:
  """Tensor index -> "weights" / "bias" / "constant" for each constant."""
  consumers = collections.defaultdict(list)
  for op in info["ops"]:
    for position, t in enumerate(op["inputs"]):
      consumers[t].append((op, position))

  def role_of(t: int, depth: int = 0) -> str:
    for op, position in consumers.get(t, []):
      if op["op"] in WEIGHTED_OPS:
        if op["op"] == "TRANSPOSE_CONV":
          return {1: "weights", 3: "bias"}.get(position, "constant")
        return {1: "weights", 2: "bias"}.get(position, "constant")
      # Weight-only and hybrid files dequantize weights before using them.
      if op["op"] == "DEQUANTIZE" and depth == 0:
        return role_of(op["outputs"][0], depth + 1)
    return "constant"

  return {c["index"]: role_of(c["index"]) for c in info["constants"]}


def _bias_position(op_name: str) -> int:
  return 3 if op_name == "TRANSPOSE_CONV" else 2


def _encode(values: np.ndarray, type_name: str) -> np.ndarray:
  """`values` as the bytes of a constant of `type_name` (INT4 packed)."""
  if type_name == "INT4":
    nibbles = (values.astype(np.int8) & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
      nibbles = np.append(nibbles, np.uint8(0))
    # The first value in the low nibble, as `_decode` reads it.
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
  return np.ascontiguousarray(values.astype(_NUMPY_TYPES[type_name])).view(
      np.uint8)


def regrid_weights(data: bytes,
                   grids: Mapping[int, Tuple[int, Optional[np.ndarray]]]
                   ) -> Tuple[bytes, Dict[int, float]]:
  """Stores b-bit kernels on their own grid, with the bias re-scaled to match.

  From a fake-quant range [-r, r] TFLite's converter stores a symmetric
  narrow b-bit kernel as INT4 with scale r/7 (b <= 4) or INT8 with scale
  r/127, whatever b is. The QAT grid's step is r/L, L = 2^(b-1) - 1, so only
  where 7 or 127 is a multiple of L (b = 2, 4, 8) is every stored value Q(w).
  Each stored integer q (within half a stored step of k*r/L) becomes
  k = round(q*L/7) (or /127) with scale r/L: exact, because the stored step
  is below the QAT step. The int32 bias of the same op has scale
  input_scale * weight_scale, so it is re-quantized to the new scale (its
  resolution stays one accumulator unit). A folded BatchNormalization scales
  a channel's range and grid alike, so all this holds per channel.

  A calibrating converter (weight-only models) re-quantizes from max |Q(w)|
  instead: pass the levels each channel uses, m = max|Q(w)|/Δ, and L becomes
  m per channel.

  Args:
    data: the .tflite file's bytes (main subgraph).
    grids: tensor index of a weight input of a weighted op -> (QAT bits,
      None or the levels each output channel uses).

  Returns:
    (the new file's bytes, {tensor index: max distance of the stored values
    from Q(w), in QAT steps, before the rewrite}); `data` itself when no
    kernel needs it.

  Raises:
    ExportError: a kernel's stored values are further from the assumed grid
      than the converter's rounding allows (a scale kqreg does not expect).

  Example:
  >>> import kqreg, numpy as np, os, tempfile, tensorflow as tf
  >>> f = tf.function(lambda x: 2.0 * x, input_signature=[tf.TensorSpec((1, 4))])
  >>> data = tf.lite.TFLiteConverter.from_concrete_functions(
  ...     [f.get_concrete_function()]).convert()
  >>> new_data, distances = kqreg.export.regrid_weights(data, {})  # no kernels
  >>> new_data == data, distances
  (True, {})
  """
  info = inspect_tflite(data)
  constants = {c["index"]: c for c in info["constants"]}
  todo = {}
  for index, (bits, used) in grids.items():
    const = constants.get(index)
    if const is None or const["type"] not in _STORED_PEAK:
      continue
    peak = _STORED_PEAK[const["type"]]
    levels = np.full(max(len(const["scales"]), 1), 2**(bits - 1) - 1, np.int64)
    if used is not None:
      used = np.asarray(used).reshape(-1)
      if len(levels) == 1:
        used = used.max(keepdims=True)
      if len(used) == len(levels):  # an all-zero channel keeps its scale
        levels = np.where(used > 0, used, levels)
    if np.any(peak % levels):
      todo[index] = (peak, levels)
  if not todo:
    return data, {}
  model = _schema.ModelT.InitFromPackedBuf(data, 0)
  subgraph = model.subgraphs[0]
  moved, done = {}, set()

  def _rewrite(index, values, type_name, factor):
    tensor = subgraph.tensors[index]
    model.buffers[tensor.buffer].data = _encode(values, type_name)
    scale = np.asarray(tensor.quantization.scale, np.float64) * factor
    tensor.quantization.scale = [float(s) for s in scale]

  for op in info["ops"]:
    if op["op"] not in WEIGHTED_OPS or len(op["inputs"]) < 2:
      continue
    index = op["inputs"][1]
    if index not in todo or index in done:
      continue
    peak, levels = todo[index]
    const = constants[index]
    axis = const["quantized_dimension"] or 0
    shape = [1] * len(const["shape"])
    if len(levels) > 1:
      shape[axis] = len(levels)
    ratio = levels.reshape(shape) / peak
    grid = const["values"].reshape(const["shape"]).astype(np.float64) * ratio
    k = np.round(grid)
    distance = np.abs(grid - k)
    # The converter rounded to its finer grid: at most half its step, i.e.
    # ratio/2 QAT steps. More means the scale is not r/peak as assumed, and
    # rounding would store wrong kernels.
    if np.any(distance > 0.5 * ratio + 1e-6):
      raise ExportError(
          f"Weight tensor {const['name']!r} is not stored on a grid kqreg "
          "recognises (the converter's scale differs from the QAT range); "
          "this is a kqreg bug: please report it with the model.")
    moved[index] = float(np.max(distance)) if k.size else 0.0
    _rewrite(index, k.reshape(-1), const["type"], peak / levels)
    done.add(index)
    position = _bias_position(op["op"])
    bias = op["inputs"][position] if len(op["inputs"]) > position else -1
    if bias in constants and constants[bias]["type"] == "INT32":
      b = constants[bias]["values"].astype(np.float64)
      new = np.clip(np.round(b * levels / peak), -2**31, 2**31 - 1)
      _rewrite(bias, new.astype(np.int32), "INT32", peak / levels)
      done.add(bias)
  builder = flatbuffers.Builder(len(data) + 1024)
  builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
  return bytes(builder.Output()), moved


def widen_int4(data: bytes, indices) -> bytes:
  """The file with the INT4 constants at `indices` stored as INT8.

  The same integers (within [-7, 7]) with the same scales and zero points,
  one byte each: the file computes the same values, and LiteRT reads the
  kernels without unpacking them (`kqreg.export.storage`).

  Raises:
    ExportError: a tensor is not an INT4 constant, or shares its buffer with
      a tensor not widened.
  """
  info = inspect_tflite(data)
  constants = {c["index"]: c for c in info["constants"]}
  model = _schema.ModelT.InitFromPackedBuf(data, 0)
  subgraph = model.subgraphs[0]
  indices = set(indices)
  users = collections.Counter(t.buffer for t in subgraph.tensors)
  for index in sorted(indices):
    const = constants.get(index)
    if const is None or const["type"] != "INT4":
      raise ExportError(
          f"Tensor {index} is not an INT4 constant; this is a kqreg bug: "
          "please report it with the model.")
    tensor = subgraph.tensors[index]
    if users[tensor.buffer] > 1:
      raise ExportError(
          f"Weight tensor {const['name']!r} shares its buffer with another "
          "tensor; export it with storage='size'.")
    tensor.type = _schema.TensorType.INT8
    model.buffers[tensor.buffer].data = _encode(const["values"], "INT8")
  builder = flatbuffers.Builder(2 * len(data) + 1024)
  builder.Finish(model.Pack(builder), file_identifier=_FILE_IDENTIFIER)
  return bytes(builder.Output())
