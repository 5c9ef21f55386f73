"""Export QAT models to integer TFLite files and check them against Keras.

`export_tflite` converts a model from `kqreg.quantize` with TFLite's plain
converter (`Optimize.DEFAULT`, no experimental flags), which takes every
weight and activation range from the fake-quant ops QAT learned. It writes the
file atomically and a report beside it, at `path + ".json"` (`model.tflite` ->
`model.tflite.json`), read back from the flatbuffer itself: which storage
type each weight tensor got and how many distinct integer levels it holds.

What the converter does with kqreg's bit-widths (TF 2.21):

* weights of <= 4 bits are stored as packed INT4 (levels in [-7, 7]);
  5..8-bit weights as INT8 holding only the 2^b - 1 levels of their grid;
* activations are computed in 8 bits by TFLite's integer kernels. 4-bit
  activation ranges fail to convert; 5..7-bit ones are silently widened to
  256 levels, so the file computes something the QAT model never saw. Such
  models are refused unless `allow_activation_widening=True`;
* a weight-only model (float activations, e.g. "w4") has no activation ranges:
  it needs `representative_data` to calibrate 8-bit ones, and its weights are
  re-quantized to INT8 per channel (still on their b-bit grid, but not smaller
  than at 8 bits).

`verify_tflite` runs the file in ai-edge-litert's interpreter next to the
Keras model and reports top-1 agreement, output differences in units of the
output's quantization step, and single-thread latency.

Example:

```python
qat = kqreg.quantize(model, "w4a8")
... train ...
report = kqreg.export.export_tflite(qat, "runs/w4a8/model.tflite")
check = kqreg.export.verify_tflite("runs/w4a8/model.tflite", qat, x_val)
```
"""

from __future__ import annotations

import collections
import os
import re
import statistics
import time
import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow.lite.python import schema_py_generated as _schema
from tensorflow_model_optimization.python.core.quantization.keras import (
    quantize_layer as _quantize_layer_mod,
    quantize_wrapper as _wrapper_mod,
)

from kqreg import noise as noise_lib
from kqreg.io_utils import atomic_write_bytes, atomic_write_json
from kqreg import quantizers
from kqreg.quantize import QuantizeLayer, is_quantized, quantize_scope

__all__ = [
    "ExportError",
    "REPORT_SUFFIX",
    "export_tflite",
    "verify_tflite",
    "tflite_predict",
    "report_summary",
    "inspect_tflite",
]

REPORT_SUFFIX = ".json"
"""The report of `path` is written to `path + REPORT_SUFFIX`."""

# TFLite's integer kernels compute activations in 8 bits (16 in the
# experimental 16x8 mode, which 16-bit fake-quant ranges select).
_KERNEL_ACTIVATION_BITS = 8

_TYPE_NAMES = {v: k for k, v in vars(_schema.TensorType).items()
               if not k.startswith("_")}
_OP_NAMES = {v: k for k, v in vars(_schema.BuiltinOperator).items()
             if not k.startswith("_")}
_NUMPY_TYPES = {"INT8": np.int8, "UINT8": np.uint8, "INT16": np.int16,
                "INT32": np.int32, "INT64": np.int64, "FLOAT32": np.float32,
                "FLOAT16": np.float16}
# Ops whose input 1 is a weight tensor (filter or matrix), input 2 a bias.
_WEIGHTED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
                           "TRANSPOSE_CONV", "CONV_3D", "BATCH_MATMUL"})


class ExportError(ValueError):
  """A model or path kqreg cannot export to TFLite, with what to do about it."""


# ----------------------------------------------------------------------------
# Reading a .tflite flatbuffer.


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


def _levels(const: Dict[str, Any]) -> Tuple[Optional[int], Optional[int],
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


def _roles(info: Dict[str, Any]) -> Dict[int, str]:
  """Tensor index -> "weights" / "bias" / "constant" for each constant."""
  consumers = collections.defaultdict(list)
  for op in info["ops"]:
    for position, t in enumerate(op["inputs"]):
      consumers[t].append((op, position))

  def role_of(t: int, depth: int = 0) -> str:
    for op, position in consumers.get(t, []):
      if op["op"] in _WEIGHTED_OPS:
        if op["op"] == "TRANSPOSE_CONV":
          return {1: "weights", 3: "bias"}.get(position, "constant")
        return {1: "weights", 2: "bias"}.get(position, "constant")
      # Weight-only and hybrid files dequantize weights before using them.
      if op["op"] == "DEQUANTIZE" and depth == 0:
        return role_of(op["outputs"][0], depth + 1)
    return "constant"

  return {c["index"]: role_of(c["index"]) for c in info["constants"]}


# ----------------------------------------------------------------------------
# Reading the Keras model.


def _wrappers(model: tf_keras.Model) -> List[Any]:
  return list(noise_lib._wrappers(model))  # pylint: disable=protected-access


def _activation_bits(model: tf_keras.Model) -> Dict[str, int]:
  """Layer name -> bits of each activation quantizer of `model`."""
  found = {}
  for layer in model.layers:
    if isinstance(layer, _quantize_layer_mod.QuantizeLayer):
      bits = getattr(layer.quantizer, "num_bits", None)
      if bits is not None:
        found[f"{layer.name} (model input)"] = int(bits)
  for wrapper in _wrappers(model):
    config, inner = wrapper.quantize_config, wrapper.layer
    quantizers = list(config.get_output_quantizers(inner))
    quantizers += [q for _, q in config.get_activations_and_quantizers(inner)]
    bits = [int(q.num_bits) for q in quantizers if hasattr(q, "num_bits")]
    if bits:
      found[inner.name] = min(bits)
  return found


def _weight_bits(model: tf_keras.Model) -> Dict[str, List[Tuple[str, int]]]:
  """Wrapper name -> [(weight attribute or variable name, bits)]."""
  found = collections.defaultdict(list)
  for qw in noise_lib.quantized_weights(model):
    weight = qw.weight.name.split("/")[-1].split(":")[0]
    found[qw.wrapper.name].append((weight, qw.bits))
  return dict(found)


def _match_layer(tensor_name: str, wrapper_names: Iterable[str]
                 ) -> Optional[str]:
  """The wrapper a converted tensor came from, by the names TF gave it.

  Converted weight tensors are named after the ops they were folded from,
  e.g. "cnn/quant_conv1/Conv2D;cnn/quant_conv1/LastValueQuant/FakeQuant...";
  the part naming the weight quantizer identifies the layer best.
  """
  parts = tensor_name.split(";")
  ranked = ([p for p in parts if "LastValueQuant" in p or "FakeQuant" in p] +
            parts)
  for part in ranked:
    components = part.split("/")
    for name in wrapper_names:
      if name in components:
        return name
  return None


def _float_layers(model: tf_keras.Model) -> List[str]:
  """Layers with weights that the QAT model leaves float.

  BatchNormalization is not listed: the converter folds it into the
  preceding conv or dense kernel.
  """
  names = []
  for layer in model.layers:
    if isinstance(layer, (tf_keras.layers.InputLayer,
                          _quantize_layer_mod.QuantizeLayer)):
      continue
    inner = layer.layer if isinstance(layer,
                                      _wrapper_mod.QuantizeWrapper) else layer
    if isinstance(inner, tf_keras.layers.BatchNormalization):
      continue
    if not inner.weights:
      continue
    if isinstance(layer, _wrapper_mod.QuantizeWrapper) and getattr(
        layer, "_weight_vars", None):
      continue
    names.append(inner.name)
  return names


def _float_counterpart(qat_model: tf_keras.Model) -> tf_keras.Model:
  """The QAT model with every quantizer removed and its float weights.

  Wrappers become their inner layer (rebuilt from config, with the original
  activation in place of tfmot's quantize-aware one) holding the float shadow
  weights; the input `QuantizeLayer` becomes a linear Activation, which the
  converter drops.
  """
  made = {}

  def _strip(layer):
    if isinstance(layer, _quantize_layer_mod.QuantizeLayer):
      new = tf_keras.layers.Activation("linear", name=layer.name)
    else:
      inner = layer.layer if isinstance(
          layer, _wrapper_mod.QuantizeWrapper) else layer
      config = inner.get_config()
      activation = config.get("activation")
      if (isinstance(activation, dict) and
          activation.get("class_name") == "QuantizeAwareActivation"):
        config["activation"] = activation["config"]["activation"]
      new = type(inner).from_config(config)
    made[layer.name] = new
    return new

  with quantize_scope():
    clone = tf_keras.models.clone_model(qat_model, clone_function=_strip)
  for layer in qat_model.layers:
    new = made.get(layer.name)
    if new is None or not new.weights:
      continue
    # A wrapper owns its inner layer's kernel (the inner layer then holds a
    # quantized tensor in its place) next to its own quantizer variables,
    # which are named after the wrapper.
    wrapped = isinstance(layer, _wrapper_mod.QuantizeWrapper)
    values = {_short_name(w): w for w in layer.weights
              if not (wrapped and w.name.startswith(f"{layer.name}/"))}
    new.set_weights([values[_short_name(w)].numpy() for w in new.weights])
  return clone


def _short_name(variable) -> str:
  return variable.name.split("/")[-1].split(":")[0]


# ----------------------------------------------------------------------------
# Converting.


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


def _representative(data, model: tf_keras.Model):
  """A converter `representative_dataset` over `data`'s input batches."""
  if data is None:
    return None
  dtype = model.inputs[0].dtype.as_numpy_dtype if model.inputs else np.float32

  def _batches():
    if isinstance(data, (np.ndarray, tf.Tensor)):
      array = np.asarray(data)
      for start in range(0, len(array), 32):
        yield [array[start:start + 32].astype(dtype)]
      return
    for element in data:
      # (x, y) pairs from a dataset: the input is the first item.
      if isinstance(element, (tuple, list)) and len(model.inputs) == 1:
        element = element[0]
      yield [np.asarray(element).astype(dtype)]

  return _batches


def _first_batch(data, limit: int = 256) -> Optional[np.ndarray]:
  """Up to `limit` examples of `representative_data` as one array."""
  if data is None:
    return None
  if isinstance(data, (np.ndarray, tf.Tensor)):
    return np.asarray(data)[:limit]
  chunks, total = [], 0
  for element in data:
    if isinstance(element, (tuple, list)):
      element = element[0]
    chunk = np.asarray(element)
    chunks.append(chunk)
    total += len(chunk)
    if total >= limit:
      break
  return np.concatenate(chunks)[:limit] if chunks else None


_CALLSITE = re.compile(r'"([^"@\s]+)@__inference')
_FIRST_ERROR = re.compile(r"error: ([^\n]+)")


def _conversion_error(e: Exception, model: tf_keras.Model) -> ExportError:
  """An ExportError naming the layer(s) the converter's message points at."""
  message = str(e)
  inner_of = {w.name: w.layer.name for w in _wrappers(model)}
  known = {layer.name for layer in model.layers} | set(inner_of.values())
  # The converter prints op locations to stderr; its error keeps them in
  # `errors` (ConverterErrorData), the message only in MLIR debug output.
  sites = [call.name.split("@")[0]
           for data in getattr(e, "errors", None) or []
           for call in getattr(getattr(data, "location", None), "call", [])
           if getattr(call, "name", "")]
  layers = []
  for site in sites + _CALLSITE.findall(message):
    for component in site.split("/"):
      if component in known:
        name = inner_of.get(component, component)
        if name not in layers:
          layers.append(name)
        break
  order = {}
  for layer in model.layers:
    order.setdefault(inner_of.get(layer.name, layer.name), len(order))
  layers.sort(key=lambda name: order.get(name, len(order)))
  if len(layers) > 6:
    layers = layers[:6] + [f"and {len(layers) - 6} more"]
  first = _FIRST_ERROR.search(message)
  reason = (first.group(1) if first else
            (message.strip().splitlines() or [type(e).__name__])[0]).strip()
  if layers:
    return ExportError(
        f"TFLite conversion of {model.name!r} failed at layer(s) "
        f"{', '.join(layers)}: {reason}")
  return ExportError(f"TFLite conversion of {model.name!r} failed: {reason}")


def _convert(model: tf_keras.Model, *, optimize: bool, representative=None,
             int_io: bool = False) -> bytes:
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  if optimize:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if representative is not None:
    converter.representative_dataset = representative
  if int_io:
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
  try:
    return converter.convert()
  except Exception as e:  # pylint: disable=broad-except
    raise _conversion_error(e, model) from e


def _with_input_quantizer(model: tf_keras.Model, x: np.ndarray
                          ) -> Tuple[tf_keras.Model, List[float]]:
  """`model` behind an 8-bit input quantizer set to the range of `x`."""
  if len(model.inputs) != 1:
    raise ExportError(
        f"Model {model.name!r} has {len(model.inputs)} inputs and no input "
        "quantizer; export supports calibrating a single input.")
  low, high = float(np.min(x)), float(np.max(x))
  low, high = min(low, 0.0), max(high, low + 1e-6)  # zero must be a level
  inputs = tf_keras.Input(batch_shape=model.inputs[0].shape,
                          dtype=model.inputs[0].dtype, name="input")
  layer = QuantizeLayer(quantizers.ActivationQuantizer(8), name="input_quant")
  outputs = model(layer(inputs), training=False)
  for variable in layer.weights:
    if variable.name.endswith("_min:0"):
      variable.assign(low)
    elif variable.name.endswith("_max:0"):
      variable.assign(high)
  return tf_keras.Model(inputs, outputs, name=model.name), [low, high]


def _float_size(qat_model: tf_keras.Model) -> Tuple[Optional[int], str]:
  try:
    float_model = _float_counterpart(qat_model)
    return len(_convert(float_model, optimize=False)), (
        "float32 TFLite of the same architecture holding the QAT model's "
        "float shadow weights, converted without optimizations")
  except Exception as e:  # pylint: disable=broad-except
    return None, f"float reference could not be built: {e}"


def _weight_rows(info: Dict[str, Any], model: tf_keras.Model
                 ) -> List[Dict[str, Any]]:
  roles = _roles(info)
  bits_by_wrapper = _weight_bits(model) if is_quantized(model) else {}
  inner_of = {w.name: w.layer.name for w in _wrappers(model)}
  wrapper_names = sorted(inner_of, key=len, reverse=True)
  rows = []
  for const in info["constants"]:
    role = roles[const["index"]]
    if role == "constant":
      continue  # shapes, axes, lookup tables: not parameters
    levels, per_channel, channels = _levels(const)
    wrapper = _match_layer(const["name"], wrapper_names)
    bits = None
    if role == "weights" and wrapper in bits_by_wrapper:
      candidates = bits_by_wrapper[wrapper]
      named = [b for attr, b in candidates if attr in const["name"]]
      bits = (named or [b for _, b in candidates])[0]
    rows.append({
        "name": const["name"], "role": role, "type": const["type"],
        "shape": const["shape"], "elements": const["elements"],
        "bytes": const["bytes"], "levels": levels,
        "levels_per_channel": per_channel, "channels": channels,
        "layer": inner_of.get(wrapper) if wrapper else None, "bits": bits,
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


def export_tflite(qat_model: tf_keras.Model,
                  path: str,
                  *,
                  representative_data=None,
                  int_io: bool = False,
                  allow_activation_widening: bool = False,
                  allow_float: bool = False) -> Dict[str, Any]:
  """Writes `qat_model` as an integer .tflite file and reports what it holds.

  The plain converter (`Optimize.DEFAULT`) takes every range from the QAT
  model's fake-quant ops. The report is also written as JSON to
  `path + ".json"`.

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

  Returns:
    The report: `path`, `report_path`, `size_bytes`, `float_size_bytes` and
    `ratio_to_float` (this file / the float32 TFLite of the same model),
    `op_counts`, `weights` (one row per weight and bias tensor: `name`,
    `role`, `type` as stored in the flatbuffer (INT4, INT8, INT32, FLOAT32),
    `shape`, `elements`, `bytes`, `levels` (distinct stored values),
    `levels_per_channel` (max over channels), `channels`, `layer` and `bits`
    of the Keras layer it came from where the name matches), `float_layers`,
    `float_ops`, `activation_widening` ({layer: bits}) with
    `activation_widening_note` and, given representative data,
    `widening_mismatch` (`verify_tflite` figures), `int_io`, `float_export`,
    `representative_data_used`, `input_range_calibrated` ([min, max], when
    an input quantizer was added) and `float_note` (when ops stay float).

  Raises:
    ExportError: the model is not quantized (and not `allow_float`), has
      activations below 8 bits (and not `allow_activation_widening`), is
      weight-only without `representative_data`, fails to convert, or
      `path` cannot be written.
  """
  if not isinstance(qat_model, tf_keras.Model):
    raise ExportError(
        f"qat_model must be a tf_keras Model, got {type(qat_model).__name__}; "
        "pass the model `kqreg.quantize` returned.")
  path = _check_path(path)
  quantized = is_quantized(qat_model)
  if not quantized and not allow_float:
    raise ExportError(
        f"Model {qat_model.name!r} was never quantized (no quantize wrappers): "
        "quantize and train it with `kqreg.quantize(model, 'w8a8')` first, or "
        "pass allow_float=True to export it as float32.")

  widening = {}
  used_representative = False
  if quantized:
    activation_bits = _activation_bits(qat_model)
    widening = {name: bits for name, bits in activation_bits.items()
                if bits < _KERNEL_ACTIVATION_BITS}
    if widening and not allow_activation_widening:
      listed = ", ".join(f"{name} ({bits}-bit)"
                         for name, bits in widening.items())
      raise ExportError(
          f"Activation quantizers below 8 bits in layers {listed}: TFLite's "
          "integer kernels compute 8-bit activations, so 4-bit activations "
          "fail to convert and 5-7-bit ones are widened to 256 levels and the "
          "file's outputs drift from the QAT model's. Train with 8-bit "
          "activations (e.g. 'w4a8'), or pass allow_activation_widening=True "
          "to export anyway.")
    weight_only = not activation_bits
    if weight_only and representative_data is None:
      raise ExportError(
          f"Model {qat_model.name!r} quantizes weights only (float "
          "activations, e.g. policy 'w4'), so it has no activation ranges for "
          "an integer file: pass representative_data= (a few hundred training "
          "inputs) to calibrate 8-bit activations, or train with 'w4a8'.")
    representative = (_representative(representative_data, qat_model)
                      if weight_only else None)
    used_representative = representative is not None
    to_convert = qat_model
    # Without an input quantizer (kqreg.quantize inserts none when the input
    # feeds a Flatten, as in the MLP) the converter keeps every layer before
    # the first activation range float. Converter calibration would fill the
    # range in but re-quantize all weights to INT8, losing INT4 storage, so
    # put an 8-bit input quantizer with the data's range in front instead.
    no_input_range = not weight_only and not any(
        isinstance(layer, _quantize_layer_mod.QuantizeLayer)
        for layer in qat_model.layers)
    if no_input_range and representative_data is not None:
      to_convert, input_range = _with_input_quantizer(
          qat_model, _first_batch(representative_data, limit=4096))
      used_representative = True
    data = _convert(to_convert, optimize=True, representative=representative,
                    int_io=int_io)
  else:
    if int_io:
      raise ExportError(
          "int_io=True needs a quantized model; a float export keeps float32 "
          "inputs and outputs: pass int_io=False.")
    data = _convert(qat_model, optimize=False)

  _write(path, atomic_write_bytes, data)
  info = inspect_tflite(data)
  if quantized:
    float_size, float_note = _float_size(qat_model)
  else:
    float_size, float_note = len(data), "the file itself is float32"
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
      "float_layers": _float_layers(qat_model),
      "float_ops": _float_ops(info),
      "activation_widening": widening,
      "int_io": bool(int_io),
      "float_export": not quantized,
      "representative_data_used": used_representative,
      "tensorflow": tf.__version__,
  }
  if quantized and no_input_range and representative_data is not None:
    report["input_range_calibrated"] = input_range
  if report["float_ops"] and quantized:
    report["float_note"] = (
        f"Ops {sorted(set(report['float_ops']))} compute in float: the model "
        "has no activation range before them (e.g. no input quantizer). Pass "
        "representative_data= to calibrate 8-bit ranges for them.")
    warnings.warn(report["float_note"], stacklevel=2)
  if widening:
    report["activation_widening_note"] = (
        "TFLite computes these activations in 8 bits (256 levels), not at the "
        "bits QAT trained them at; outputs differ from the Keras model's.")
    probe = _first_batch(representative_data)
    if probe is not None:
      check = verify_tflite(path, qat_model, probe)
      report["widening_mismatch"] = {
          k: check[k] for k in ("top1_agreement", "max_abs_diff",
                                "mean_abs_diff", "diff_units", "examples")}
  _write(report["report_path"], atomic_write_json, report)
  return report


def report_summary(report: Dict[str, Any]) -> Dict[str, Any]:
  """The figures of an `export_tflite` report a run's result.json keeps."""
  return {
      "path": report["path"],
      "size_bytes": report["size_bytes"],
      "ratio_to_float": report["ratio_to_float"],
      "weight_types": sorted({w["type"] for w in report["weights"]
                              if w["role"] == "weights"}),
      "float_ops": sorted(set(report["float_ops"])),
  }


# ----------------------------------------------------------------------------
# Verifying.


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
  """Runs a single-input, single-output .tflite file on `x`, one example at a time.

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
  int_in = np.issubdtype(in_detail["dtype"], np.integer)
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
    ExportError: `path` is missing or not a TFLite file, or the model has
      other than one input and one output.
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
