"""The TFLite converter call: the model it sees (the QAT model, or its float
counterpart for the reference file), data for calibration, ranges, error
messages."""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow.lite.python.convert_phase import ConverterError

from kqreg import _tfmot
from kqreg.qat import quantizers
from kqreg.export.errors import ExportError
from kqreg.qat import introspect
from kqreg.qat.layers import QuantizeLayer

__all__ = ["Prepared", "convert", "first_batch", "float_reference", "prepare",
           "representative", "with_input_quantizer"]


def representative(data, model: tf_keras.Model):
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


def first_batch(data, limit: int = 256) -> Optional[np.ndarray]:
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


def _conversion_error(e: ConverterError, model: tf_keras.Model) -> ExportError:
  """An ExportError naming the layer(s) the converter's message points at."""
  message = str(e)
  inner_of = {w.name: w.layer.name for w in _tfmot.iter_wrappers(model)}
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


def _inference_function(model: tf_keras.Model
                        ) -> tf.types.experimental.ConcreteFunction:
  """`model(inputs, training=False)` as one concrete function holding its
  weights as constants, with the model's output names.

  `TFLiteConverter.from_keras_model` saves the Keras model itself, which
  traces every layer's call (three times the whole conversion of a YOLOv8
  detector), and the gradient of every custom-gradient op (TensorFlow's
  swish is one). This traces the model once and no gradient. Freezing the
  variables here, not in the converter, spares it saving and loading a
  SavedModel of every variable (two thirds of a YOLOv8 head's conversion).
  The file holds `from_keras_model`'s ops, tensors and signature and gives
  its outputs to the bit; tensor names, the order of parallel branches' ops
  and the converter's record of its source may differ (tests compare them).
  """
  spec = model.save_spec(dynamic_batch=False)
  if spec is None:
    raise ExportError(
        f"Model {model.name!r} has no input shape yet: call it on a batch "
        "(or build it) before exporting.")

  def infer(inputs):
    outputs = model(inputs, training=False)
    if isinstance(outputs, dict):
      return outputs
    # The signature's outputs are named after the model's, as Keras names
    # them when it saves a model.
    return dict(zip(model.output_names, tf.nest.flatten(outputs)))

  function = tf.function(infer, autograph=False).get_concrete_function(
      spec[0][0])
  frozen = _tfmot.freeze_variables(function)
  structure = function.structured_outputs

  def named(inputs):  # the frozen function returns a flat list
    return tf.nest.pack_sequence_as(structure, frozen(inputs))

  return tf.function(named, autograph=False).get_concrete_function(
      spec[0][0])


def _save_for_conversion(model: tf_keras.Model, folder: str) -> None:
  """Saves the model's inference function to `folder` as a SavedModel of one
  signature, which the converter reads as it reads a Keras model's."""
  tf.saved_model.save(
      tf.Module(), folder, signatures=_inference_function(model),
      options=tf.saved_model.SaveOptions(
          save_debug_info=True,  # the converter's errors name layers from it
          experimental_custom_gradients=False))


class _NoGradientNote(logging.Filter):
  """Drops the loader's note that the SavedModel holds no custom gradients:
  the converter reads it for inference only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "unsaved custom gradients" not in record.getMessage()


def convert(model: tf_keras.Model, *, optimize: bool, representative=None,
             int_io: bool = False) -> bytes:
  note_filter, absl_logger = _NoGradientNote(), logging.getLogger("absl")
  absl_logger.addFilter(note_filter)
  try:
    with tempfile.TemporaryDirectory(prefix="kqreg-export-") as folder:
      _save_for_conversion(model, folder)
      converter = tf.lite.TFLiteConverter.from_saved_model(folder)
      if optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
      if representative is not None:
        converter.representative_dataset = representative
      if int_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
      return converter.convert()
  except ConverterError as e:
    raise _conversion_error(e, model) from e
  finally:
    absl_logger.removeFilter(note_filter)


def with_input_quantizer(model: tf_keras.Model, x: np.ndarray
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


def float_reference(qat_model: tf_keras.Model) -> Tuple[Optional[bytes], str]:
  """The float32 reference file (for `ratio_to_float` and its latency)."""
  try:
    float_model = introspect.float_counterpart(qat_model)
    return convert(float_model, optimize=False), (
        "float32 TFLite of the same architecture holding the QAT model's "
        "float shadow weights, converted without optimizations")
  except (ExportError, ValueError, KeyError, TypeError) as e:
    # The size ratio is a nicety: a model whose layers cannot be rebuilt
    # from config still exports.
    return None, f"float reference could not be built: {e}"


@dataclasses.dataclass
class Prepared:
  """The model the converter sees and how its missing ranges were filled."""
  model: tf_keras.Model
  representative: Any = None
  input_range: Optional[List[float]] = None
  used_representative: bool = False


def prepare(qat_model: tf_keras.Model, representative_data,
            activation_bits: Dict[str, int]) -> Prepared:
  """Fills in the activation ranges QAT left missing, from the data.

  `activation_bits`: {layer: bits} of the model's activation quantizers
  (`exportable.check_model`); none means a weight-only model.
  """
  if not activation_bits:
    if representative_data is None:
      raise ExportError(
          f"Model {qat_model.name!r} quantizes weights only (float "
          "activations, e.g. policy 'w4'), so it has no activation ranges "
          "for an integer file: pass representative_data= (a few hundred "
          "training inputs) to calibrate 8-bit activations, or train with "
          "'w4a8'.")
    return Prepared(qat_model, representative(representative_data,
                                                qat_model),
                     used_representative=True)
  # Without an input quantizer (kqreg.quantize inserts none when the input
  # feeds a Flatten, as in the MLP) the converter keeps every layer before
  # the first activation range float. Converter calibration would fill the
  # range in but re-quantize all weights to INT8, losing INT4 storage, so
  # put an 8-bit input quantizer with the data's range in front instead.
  has_input_range = any(True for _ in _tfmot.iter_quantize_layers(qat_model))
  if (has_input_range or representative_data is None
      or not qat_model.inputs[0].dtype.is_floating):
    # Token ids and other integer inputs are used as they are (an Embedding
    # gathers with them): there is no range to put them on.
    return Prepared(qat_model)
  model, input_range = with_input_quantizer(
      qat_model, first_batch(representative_data, limit=4096))
  return Prepared(model, input_range=input_range, used_representative=True)
