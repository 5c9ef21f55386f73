"""What an export needs to know about a Keras (QAT) model, and what it refuses.

`check_model` refuses a trained model `export_tflite` cannot export as
trained; `check_exportable` says, before training, whether a policy's or a model's
bits can become an integer TFLite file with the values QAT trained.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg import _tfmot
from kqreg.qat import policy as policy_lib
from kqreg.export.errors import ExportError, KERNEL_ACTIVATION_BITS
from kqreg.qat import introspect

__all__ = ["ModelCheck", "check_exportable", "check_model", "export_problems",
           "kernel_bits"]


def _wrappers(model: tf_keras.Model) -> List[_tfmot.QuantizeWrapper]:
  return list(_tfmot.iter_wrappers(model))


def activation_bits(model: tf_keras.Model) -> Dict[str, int]:
  """Layer name -> bits of each activation quantizer of `model`."""
  found = {}
  for layer in model.layers:
    if isinstance(layer, _tfmot.QuantizeLayer):
      bits = getattr(layer.quantizer, "num_bits", None)
      if bits is not None:
        found[f"{layer.name} (model input)"] = int(bits)
  for wrapper in _wrappers(model):
    config, inner = wrapper.quantize_config, wrapper.layer
    quantizers = list(config.get_output_quantizers(inner))
    quantizers += [q for _, q in config.get_activations_and_quantizers(inner)]
    bits = [int(q.num_bits) for q in quantizers if hasattr(q, "num_bits")]
    if bits:
      # The bits furthest from TFLite's 8 are the ones export must judge.
      found[inner.name] = max(
          bits, key=lambda b: abs(b - KERNEL_ACTIVATION_BITS))
  return found


def _by_wrapper(weights: List[introspect.QuantizedWeight]
                ) -> Dict[str, List[Tuple[str, introspect.QuantizedWeight]]]:
  """Wrapper name -> [(weight variable name, its `QuantizedWeight`)]."""
  found = collections.defaultdict(list)
  for qw in weights:
    found[qw.wrapper.name].append((_short_name(qw.weight), qw))
  return dict(found)


def match_layer(tensor_name: str, wrapper_names: Iterable[str]
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


def float_layers(model: tf_keras.Model) -> List[str]:
  """Layers with weights that the QAT model leaves float.

  BatchNormalization is not listed: the converter folds it into the
  preceding conv or dense kernel.
  """
  names = []
  for layer in model.layers:
    if isinstance(layer, (tf_keras.layers.InputLayer,
                          _tfmot.QuantizeLayer)):
      continue
    inner = layer.layer if isinstance(layer,
                                      _tfmot.QuantizeWrapper) else layer
    if isinstance(inner, tf_keras.layers.BatchNormalization):
      continue
    if not inner.weights:
      continue
    if isinstance(layer, _tfmot.QuantizeWrapper) and getattr(
        layer, "_weight_vars", None):
      continue
    names.append(inner.name)
  return names


def _short_name(variable) -> str:
  return variable.name.split("/")[-1].split(":")[0]


def _activation_problem(where: str, bits: int) -> Optional[str]:
  if bits < KERNEL_ACTIVATION_BITS:
    return f"{where}: {bits}-bit activations (TFLite computes 8)"
  if bits > KERNEL_ACTIVATION_BITS:
    return (f"{where}: {bits}-bit activations (kqreg exports 8-bit integer "
            "activations only)")
  return None


def _policy_settings(policy: policy_lib.BitPolicy
                     ) -> List[Tuple[str, policy_lib.Bits]]:
  settings = [("default", policy.default)]
  for key in ("first", "last"):
    bits = getattr(policy, key, None)
    if bits is not None:
      settings.append((key, bits))
  for attr in ("names", "types"):
    for key, bits in getattr(policy, attr, ()) or ():
      settings.append((str(key), bits))
  return settings


# 1-D convolutions run as 2-D ones on an expanded kernel; a per-channel
# kernel's quantized axis then moves and the converter fails ("'tfl.reshape'
# op requires 'output' type ... to be cast compatible").
_PER_CHANNEL_REFUSED = (tf_keras.layers.Conv1D, tf_keras.layers.DepthwiseConv1D,
                        tf_keras.layers.SeparableConv1D)
# Layers whose conversion fails whatever their bits (TF 2.21), and why:
# (types, quantized ones only, reason).
_UNCONVERTIBLE = (
    ((tf_keras.layers.RNN, tf_keras.layers.Bidirectional), False,
     "the recurrent loop does not convert, quantized or float (its "
     "TensorList has no static element shape); build it with unroll=True, "
     "which converts (the cell runs in float)"),
    ((tf_keras.layers.MaxPooling3D, tf_keras.layers.AveragePooling3D), False,
     "TFLite has no 3-D pooling kernel (TF Select only); downsample with "
     "a strided Conv3D instead (CONV_3D converts)"),
)


def _recurrent(layer) -> bool:
  return isinstance(layer, (tf_keras.layers.RNN, tf_keras.layers.Bidirectional))


def _rolled_recurrence(layer) -> bool:
  """A recurrent loop (an LSTM's, a Bidirectional's); unrolled, it is
  `timesteps` copies of the cell."""
  if isinstance(layer, tf_keras.layers.Bidirectional):
    layer = layer.forward_layer
  return isinstance(layer, tf_keras.layers.RNN) and not layer.unroll


def _family_status(layer) -> str:
  from kqreg.qat import families  # pylint: disable=g-import-not-at-top
  family = families.family_of(layer)
  return family.export if family is not None else ""


def _inner_layers(model: tf_keras.Model):
  for layer in model.layers:
    yield layer.layer if isinstance(layer, _tfmot.QuantizeWrapper) else layer


def family_problems(model: tf_keras.Model) -> List[str]:
  """Layers that convert but do not run in integers, with the measured reason.

  From `LAYER_FAMILIES[...].export` (statuses "hybrid: ..." and
  "float: ..."): the file holds their kernels, but TFLite computes them
  in float.
  """
  problems = []
  for inner in _inner_layers(model):
    status = _family_status(inner)
    if _rolled_recurrence(inner):
      continue  # refused outright (`layer_problems`)
    if status.startswith(("hybrid", "float")):
      problems.append(f"{inner.name}: {type(inner).__name__} {status}")
  return problems + _unfolded_batch_norms(model)


def _unfolded_batch_norms(model: tf_keras.Model) -> List[str]:
  """Keras BatchNormalizations no conv or dense folds into (`kqreg.quantize`
  swaps those over image channels for an int8 depthwise conv)."""
  from kqreg.qat import families  # pylint: disable=g-import-not-at-top
  problems = []
  for layer in model.layers:
    keras_bn = (isinstance(layer, _tfmot.QuantizeWrapper) and
                type(layer.layer) is tf_keras.layers.BatchNormalization)  # pylint: disable=unidiomatic-typecheck
    if not keras_bn:
      continue
    inbound = [l.layer if isinstance(l, _tfmot.QuantizeWrapper) else l
               for l in _tfmot.inbound_layers(model, layer)]
    if len(inbound) == 1 and families.folds_batch_norm(inbound[0]):
      continue
    problems.append(
        f"{layer.layer.name}: BatchNormalization float: no conv or dense "
        "before it to fold into, so TFLite runs it as MUL and ADD in float "
        "(over the channels of images, kqreg.quantize makes it a "
        "DepthwiseBatchNormalization, an int8 DEPTHWISE_CONV_2D)")
  return problems


def _or_float(layer_name: str) -> str:
  return f", or keep it float ('skip={layer_name}')"


def layer_problems(model: tf_keras.Model,
                   weights: List[introspect.QuantizedWeight]) -> List[str]:
  """Quantized layers TFLite's converter cannot take (TF 2.21), by name.

  Its TRANSPOSE_CONV takes no INT4 weights (<= 4 bits are stored as INT4),
  and a per-channel Conv2DTranspose kernel fails to convert ("'tfl.transpose'
  op has mismatched quantized axes"); nor does a per-channel Conv1D,
  DepthwiseConv1D or SeparableConv1D kernel (alone or in a
  TimeDistributed), a rolled recurrent layer
  (LSTM, GRU, SimpleRNN, Bidirectional: one with unroll=True converts), or
  3-D pooling. A <= 4-bit Embedding table converts, but LiteRT refuses to
  run the file. Each problem ends with what to do. `weights`: the model's
  `introspect.quantized_weights`.
  """
  problems = []
  for layer in model.layers:
    wrapped = isinstance(layer, _tfmot.QuantizeWrapper)
    inner = layer.layer if wrapped else layer
    for types, quantized_only, reason in _UNCONVERTIBLE:
      if (isinstance(inner, types) and (wrapped or not quantized_only)
          and (_rolled_recurrence(inner) or not _recurrent(inner))):
        problems.append(f"{inner.name}: {reason}")
  reported = set()
  for qw in weights:
    # A TimeDistributed layer converts as the layer it wraps.
    kind = _time_distributed_inner(qw.wrapper.layer)
    if (isinstance(kind, _PER_CHANNEL_REFUSED) and
        getattr(qw.quantizer, "per_axis", False) and
        qw.layer_name not in reported):
      reported.add(qw.layer_name)
      problems.append(
          f"{qw.layer_name}: per-channel {_kind_name(qw.wrapper.layer)} "
          "weights (TFLite runs it as a 2-D convolution and refuses the "
          "moved channel axis); quantize per tensor (per_channel=False, "
          "--per_channel=false)"
          f"{_or_float(qw.layer_name)}")
    if isinstance(kind, tf_keras.layers.Embedding) and qw.bits <= 4:
      problems.append(
          f"{qw.layer_name}: {qw.bits}-bit Embedding table (stored as INT4, "
          "whose GATHER output LiteRT's QUANTIZE refuses to run); give it "
          f"5..8 bits (e.g. 'w4a8,{qw.layer_name}=w8a8')"
          f"{_or_float(qw.layer_name)}")
    if not isinstance(kind, tf_keras.layers.Conv2DTranspose):
      continue
    if qw.bits <= 4:
      problems.append(f"{qw.layer_name}: {qw.bits}-bit Conv2DTranspose "
                      "weights (TFLite's TRANSPOSE_CONV takes no INT4); give "
                      f"it 5..8 bits (e.g. 'w4a8,{qw.layer_name}=w8a8')"
                      f"{_or_float(qw.layer_name)}")
    if getattr(qw.quantizer, "per_axis", False):
      problems.append(f"{qw.layer_name}: per-channel Conv2DTranspose "
                      "weights (TFLite converts per-tensor ones only); "
                      "quantize per tensor (per_channel=False, "
                      "--per_channel=false)"
                      f"{_or_float(qw.layer_name)}")
  return problems


def _time_distributed_inner(layer):
  while isinstance(layer, tf_keras.layers.TimeDistributed):
    layer = layer.layer
  return layer


def _kind_name(layer) -> str:
  """`Conv1D`, or `TimeDistributed(Conv1D)` for one wrapped."""
  if isinstance(layer, tf_keras.layers.TimeDistributed):
    return f"TimeDistributed({_kind_name(layer.layer)})"
  return type(layer).__name__


def export_problems(policy_or_model: Union[str, policy_lib.BitPolicy,
                                           tf_keras.Model]) -> List[str]:
  """What keeps a policy or QAT model from an exact integer TFLite file.

  Args:
    policy_or_model: a `BitPolicy` (or its string) or a model from
      `kqreg.quantize`.

  Returns:
    One short phrase per problem ("conv1: 4-bit activations (TFLite computes
    8)"), empty when the export will hold the values QAT trained. A policy
    that quantizes no activation (weight-only, e.g. "w4") is fine: export
    calibrates 8-bit activations from representative data.

  Example:
  >>> export_problems("w4a8"), len(export_problems("w4a4"))
  ([], 1)
  """
  problems = []
  if isinstance(policy_or_model, tf_keras.Model):
    weights = introspect.quantized_weights(policy_or_model)
    # Noise twins (n<b>) are float kernels with training-time noise.
    problems += [f"{qw.layer_name}: {qw.bits}-bit noise twin (float weights "
                 "at inference; export the w<b> model)"
                 for qw in weights if getattr(qw, "is_noise", False)]
    for name, bits in activation_bits(policy_or_model).items():
      problem = _activation_problem(name, bits)
      if problem:
        problems.append(problem)
    return (problems + layer_problems(policy_or_model, weights) +
            family_problems(policy_or_model))
  policy = policy_lib.BitPolicy.parse(policy_or_model)
  for key, bits in _policy_settings(policy):
    if getattr(bits, "noise", False):
      problems.append(f"{key}: {bits} trains with noise, not on a grid")
      continue
    if bits.activation is not None:
      problem = _activation_problem(f"{key}={bits}", bits.activation)
      if problem:
        problems.append(problem)
  return problems


def check_exportable(policy_or_model: Union[str, policy_lib.BitPolicy,
                                            tf_keras.Model]) -> None:
  """Raises `ExportError` if `export_tflite` would refuse these bits.

  Call it before training (e.g. for a trainer's `--export_tflite`) with the
  run's `BitPolicy`, or on a QAT model.

  Raises:
    ExportError: one line naming the settings and what to do.

  Example:
  >>> check_exportable("w4a8")
  >>> try:
  ...   check_exportable("w4a4")
  ... except ExportError as e:
  ...   print("refused")
  refused
  """
  problems = export_problems(policy_or_model)
  if problems:
    raise ExportError(
        f"Cannot export to an integer TFLite file: {'; '.join(problems)}. "
        "Train with 8-bit activations (e.g. 'w4a8') or weight-only ('w4'), "
        "with grid (not noise) bits, or do not export.")


def kernel_bits(info: Dict[str, Any], checked: "ModelCheck",
                roles: Dict[int, str]
                ) -> Dict[int, Tuple[Optional[str], Optional[int], Any]]:
  """Tensor index -> (Keras layer, QAT bits, `QuantizedWeight`) by name.

  `info` is the file's `flatbuffer.inspect_tflite`, `roles` its
  `flatbuffer.roles`, `checked` what `check_model` read of the Keras model;
  each parameter tensor is matched to the wrapper whose name it carries.
  """
  wrapper_names = sorted(checked.layer_of, key=len, reverse=True)
  found = {}
  for const in info["constants"]:
    if roles[const["index"]] == "constant":
      continue  # shapes, axes, lookup tables: not parameters
    wrapper = match_layer(const["name"], wrapper_names)
    qw = None
    if roles[const["index"]] == "weights" and wrapper in checked.weights:
      candidates = checked.weights[wrapper]
      named = [q for attr, q in candidates if attr in const["name"]]
      qw = (named or [q for _, q in candidates])[0]
    found[const["index"]] = (checked.layer_of.get(wrapper) if wrapper
                             else None, qw.bits if qw else None, qw)
  return found


def _check_quantized(qat_model, allow_float: bool) -> bool:
  """Whether `qat_model` is quantized; refuses what cannot be exported."""
  if not isinstance(qat_model, tf_keras.Model):
    raise ExportError(
        f"qat_model must be a tf_keras Model, got {type(qat_model).__name__}; "
        "pass the model `kqreg.quantize` returned.")
  quantized = introspect.is_quantized(qat_model)
  if not quantized and not allow_float:
    raise ExportError(
        f"Model {qat_model.name!r} was never quantized (no quantize wrappers): "
        "quantize and train it with `kqreg.quantize(model, 'w8a8')` first, or "
        "pass allow_float=True to export it as float32.")
  return quantized


def _check_layers(qat_model: tf_keras.Model,
                  weights: List[introspect.QuantizedWeight]) -> None:
  problems = layer_problems(qat_model, weights)
  if problems:
    raise ExportError(f"TFLite cannot convert {'; '.join(problems)}.")


def _check_activation_bits(bits_by_layer: Dict[str, int],
                           allow_widening: bool) -> Dict[str, int]:
  """{layer: bits} of activations below 8 bits that TFLite will widen."""
  activation_bits = bits_by_layer
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


@dataclasses.dataclass(frozen=True)
class ModelCheck:
  """What `check_model` read of a model it lets through: all that the rest
  of an export needs of the Keras model, besides converting it, read once.

  Attributes:
    name: the model's name.
    quantized: the model has quantize wrappers (False: a float export).
    activation_bits: {layer: bits} of its activation quantizers.
    widening: those below 8 bits, which TFLite computes in 8 (only with
      `allow_widening`).
    weights: {wrapper name: [(weight name, its `QuantizedWeight`)]}.
    layer_of: {wrapper name: the name of the layer it wraps}.
    float_layers: layers with weights that stay float (`float_layers`).
    family_problems: layers that convert but compute in float, and why
      (`family_problems`).
  """
  name: str
  quantized: bool
  activation_bits: Dict[str, int] = dataclasses.field(default_factory=dict)
  widening: Dict[str, int] = dataclasses.field(default_factory=dict)
  weights: Dict[str, List[Tuple[str, introspect.QuantizedWeight]]] = (
      dataclasses.field(default_factory=dict))
  layer_of: Dict[str, str] = dataclasses.field(default_factory=dict)
  float_layers: List[str] = dataclasses.field(default_factory=list)
  family_problems: List[str] = dataclasses.field(default_factory=list)


def check_model(qat_model, *, allow_float: bool, allow_widening: bool
                ) -> ModelCheck:
  """Refuses a model `export_tflite` cannot export as trained; reads the
  rest of what the export needs of it.

  Raises:
    ExportError: not a tf_keras model; not quantized (and not
      `allow_float`); layers TFLite cannot convert at their bits;
      activations above 8 bits, or below 8 bits without `allow_widening`.

  Example:
  >>> import tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
  ...                              tf_keras.layers.Dense(2, name="dense")])
  >>> checked = check_model(model, allow_float=True, allow_widening=False)
  >>> checked.quantized, checked.float_layers
  (False, ['dense'])
  """
  if not _check_quantized(qat_model, allow_float):
    return ModelCheck(qat_model.name, False,
                      float_layers=float_layers(qat_model))
  weights = introspect.quantized_weights(qat_model)
  _check_layers(qat_model, weights)
  bits = activation_bits(qat_model)
  return ModelCheck(
      qat_model.name, True, bits, _check_activation_bits(bits, allow_widening),
      weights=_by_wrapper(weights),
      layer_of={w.name: w.layer.name for w in _wrappers(qat_model)},
      float_layers=float_layers(qat_model),
      family_problems=family_problems(qat_model))
