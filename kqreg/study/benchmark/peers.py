"""Other Keras low-bit QAT tools behind one small interface, for the benchmark.

A user choosing a low-bit Keras tool weighs kqreg against these peers:

  tfmot_nbit  tfmot's own experimental n-bit scheme
              (`DefaultNBitQuantizeScheme(num_bits_weight, num_bits_activation)`)
  qkeras      QKeras: QConv2D/QDense/QDepthwiseConv2D with
              `quantized_bits(b, 0, alpha=1)` kernels, QActivation
              `quantized_relu(a, 3)` for ReLUs
  larq        Larq: QuantConv2D/QuantDense/QuantDepthwiseConv2D with
              `DoReFa(k_bit=b, mode="weights")` kernels and
              `DoReFa(k_bit=a)` layer inputs

Each `Peer` says whether it can run here (`available()`, with the reason
measured from the import and version checks, or the install conflict that
keeps it out), which layers of a model it cannot quantize (`unsupported`) and
builds a trainable tf_keras model from a float one (`build`, weights copied).
`export` converts any of these models to TFLite the same way and reads from
the flatbuffer how the kernels are stored.

Example:

```python
from kqreg.study.benchmark import peers
for peer in peers.PEERS:
  ok, reason = peer.available()
  if ok:
    qat = peer.build(float_model, weight_bits=4, activation_bits=8)
```
"""

from __future__ import annotations

import abc
import collections
import importlib
import importlib.metadata
import warnings
from typing import Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from kqreg.export import converter
from kqreg.export import flatbuffer

__all__ = ["Peer", "PeerError", "TfmotNBit", "QKerasPeer", "LarqPeer", "PEERS",
           "get", "export"]

# What keeps a peer out of kqreg's stack when it is not importable, measured
# with pip 23.2 on 2026-12-01 beside numpy 2.4.6: (the numpy specifier the
# peer's newest release declares, that release's requirement, what pip did).
# The live numpy version is checked against the specifier, so the reason
# says whether the conflict still holds.
_INSTALL_CONFLICTS = {
    "larq": ("<2.0", "larq 0.14.0 requires numpy<2.0,>=1.15.4",
             "`pip install larq` would downgrade numpy to 1.26.4; with numpy "
             "pinned pip stops with ResolutionImpossible. It runs on numpy 2 "
             "all the same: pip install --no-deps larq==0.14.0 "
             "terminaltables==3.1.10 (what the README's test command does)"),
}

# QKeras' quantized_relu keeps `integer` bits left of the point; its default
# (0) clips every activation at 1, which BN-normalised ReLU outputs exceed
# often. With 3, a-bit outputs span [0, 8) in steps of 8 / 2^a.
_RELU_INTEGER_BITS = 3


class PeerError(ValueError):
  """A peer cannot build this model at these bits (the message says why)."""


class Peer(abc.ABC):
  """One low-bit QAT tool: availability, coverage, build.

  Attributes:
    name: the tool's label in the benchmark's rows.
    module: what `available` imports.
    distribution: the pip distribution, for the version.
  """

  name: str
  module: str
  distribution: str

  def version(self) -> Optional[str]:
    """The installed distribution's version, or None."""
    try:
      return importlib.metadata.version(self.distribution)
    except importlib.metadata.PackageNotFoundError:
      return None

  def available(self) -> Tuple[bool, str]:
    """(usable here, why or why not): from the import and version checks."""
    try:
      module = importlib.import_module(self.module)
    except ImportError as e:
      return False, _missing_reason(self.distribution, e)
    problem = self._check(module)
    if problem:
      return False, problem
    return True, f"{self.distribution} {self.version() or '(version unknown)'}"

  def _check(self, module) -> Optional[str]:
    """A reason the imported `module` cannot serve here, or None."""
    del module
    return None

  @abc.abstractmethod
  def unsupported(self, model: tf_keras.Model) -> List[str]:
    """Classes of `model`'s layers this peer cannot quantize.

    QKeras and Larq keep them float; tfmot's scheme refuses the model.
    """

  @abc.abstractmethod
  def build(self, model: tf_keras.Model, weight_bits: int,
            activation_bits: Optional[int] = 8) -> tf_keras.Model:
    """A trainable QAT model of `model` (weights copied), logits out.

    Args:
      model: a float Functional tf_keras model.
      weight_bits: kernel bits, 2..8.
      activation_bits: activation bits, or None for weight-only.

    Raises:
      PeerError: the peer cannot express these bits or this model.
    """


def _missing_reason(distribution: str, error: ImportError) -> str:
  reason = f"not importable ({error})"
  conflict = _INSTALL_CONFLICTS.get(distribution.lower())
  if conflict is None:
    return reason
  from packaging.specifiers import SpecifierSet  # pylint: disable=g-import-not-at-top
  specifier, requirement, pip_result = conflict
  if np.__version__ in SpecifierSet(specifier):
    return f"{reason}; numpy {np.__version__} fits {requirement}: install it"
  return (f"{reason}; {requirement} but this stack has numpy "
          f"{np.__version__}: {pip_result}")


def _check_bits(weight_bits: int, activation_bits: Optional[int],
                activation_range: Tuple[int, int] = (2, 16)) -> None:
  if not isinstance(weight_bits, int) or not 2 <= weight_bits <= 8:
    raise PeerError("`weight_bits` must be an integer in 2..8; got "
                    f"{weight_bits!r}.")
  low, high = activation_range
  if activation_bits is not None and (not isinstance(activation_bits, int) or
                                      not low <= activation_bits <= high):
    raise PeerError(f"`activation_bits` must be None or an integer in "
                    f"{low}..{high}; got {activation_bits!r}.")


def _kernel_layers(model: tf_keras.Model) -> List[tf_keras.layers.Layer]:
  return [l for l in model.layers
          if any(w.name.split("/")[-1].startswith(("kernel", "depthwise_kernel",
                                                   "pointwise_kernel"))
                 for w in l.weights)]


def _clone(model: tf_keras.Model, replace) -> tf_keras.Model:
  """`model` with each layer `replace(layer)` returns swapped, weights copied."""

  def _clone_layer(layer):
    new = replace(layer)
    return new if new is not None else layer.__class__.from_config(
        layer.get_config())

  with warnings.catch_warnings():
    # Layers rebuilt from config re-run their initializers ("unseeded
    # initializer called multiple times"); the weights are copied below.
    warnings.simplefilter("ignore", UserWarning)
    clone = tf_keras.models.clone_model(model, clone_function=_clone_layer)
  for old, new in zip(model.layers, clone.layers):
    new.set_weights(old.get_weights())
  return clone


# ----------------------------------------------------------------------------
# tfmot's experimental n-bit scheme.


class TfmotNBit(Peer):
  """tfmot's `DefaultNBitQuantizeScheme`: per-channel conv kernels, b-bit
  symmetric narrow ranges, a-bit moving-average activation ranges, BN folded.
  It has no weight-only mode (activations are always quantized)."""

  name = "tfmot_nbit"
  module = ("tensorflow_model_optimization.quantization.keras.experimental."
            "default_n_bit")
  distribution = "tensorflow-model-optimization"

  def _scheme(self, weight_bits: int = 8, activation_bits: int = 8):
    n_bit = tfmot.quantization.keras.experimental.default_n_bit
    return n_bit.DefaultNBitQuantizeScheme(
        num_bits_weight=weight_bits, num_bits_activation=activation_bits)

  def unsupported(self, model: tf_keras.Model) -> List[str]:
    registry = self._scheme().get_quantize_registry()
    # The scheme's transforms fold BN into the conv before it and split
    # SeparableConv2D; the registry does not list them.
    handled = (tf_keras.layers.InputLayer, tf_keras.layers.BatchNormalization,
               tf_keras.layers.SeparableConv2D)
    return sorted({type(l).__name__ for l in model.layers
                   if not isinstance(l, handled) and not registry.supports(l)})

  def build(self, model: tf_keras.Model, weight_bits: int,
            activation_bits: Optional[int] = 8) -> tf_keras.Model:
    _check_bits(weight_bits, activation_bits, (2, 8))
    if activation_bits is None:
      raise PeerError("tfmot's n-bit scheme has no weight-only mode: it "
                      "always quantizes activations.")
    missing = self.unsupported(model)
    if missing:
      raise PeerError(f"unsupported: {', '.join(missing)}")
    keras = tfmot.quantization.keras
    with keras.quantize_scope():
      return keras.quantize_apply(keras.quantize_annotate_model(model),
                                  scheme=self._scheme(weight_bits,
                                                      activation_bits))


# ----------------------------------------------------------------------------
# QKeras.


class QKerasPeer(Peer):
  """QKeras layers swapped in layer by layer.

  Kernels: `quantized_bits(b, 0, alpha=1)`, a fixed grid of step 2^-(b-1) on
  [-1, 1); biases and BatchNormalization stay float (TFLite folds them).
  ReLUs become `QActivation(quantized_relu(a, 3))` when activations are
  quantized. QKeras' own `utils.model_quantize` cannot be used: it renames
  classes in the model's JSON, and tf_keras 2.21 looks custom classes up by
  `registered_name`, which stays None ("Could not locate class 'QConv2D'",
  measured with QKeras 0.9.0).
  """

  name = "qkeras"
  module = "qkeras"
  distribution = "QKeras"

  # float class name -> (QKeras class name, its kernel quantizer arguments)
  _LAYERS = {
      "Dense": ("QDense", ("kernel_quantizer",)),
      "Conv1D": ("QConv1D", ("kernel_quantizer",)),
      "Conv2D": ("QConv2D", ("kernel_quantizer",)),
      "Conv2DTranspose": ("QConv2DTranspose", ("kernel_quantizer",)),
      "DepthwiseConv2D": ("QDepthwiseConv2D", ("depthwise_quantizer",)),
      "SeparableConv2D": ("QSeparableConv2D", ("depthwise_quantizer",
                                               "pointwise_quantizer")),
  }

  def _check(self, module) -> Optional[str]:
    if not issubclass(module.QConv2D, tf_keras.layers.Conv2D):
      base = module.QConv2D.__mro__[1]
      return (f"QKeras {self.version()} builds on {base.__module__}, not "
              "tf_keras")
    return None

  def unsupported(self, model: tf_keras.Model) -> List[str]:
    return sorted({type(l).__name__ for l in _kernel_layers(model)
                   if type(l).__name__ not in self._LAYERS})

  def build(self, model: tf_keras.Model, weight_bits: int,
            activation_bits: Optional[int] = 8) -> tf_keras.Model:
    _check_bits(weight_bits, activation_bits)
    import qkeras  # pylint: disable=g-import-not-at-top
    types = {getattr(tf_keras.layers, name): spec
             for name, spec in self._LAYERS.items()}

    def replace(layer):
      spec = types.get(type(layer))  # exact type: DepthwiseConv2D is a Conv2D
      if spec is not None:
        q_class, arguments = spec
        config = layer.get_config()
        for argument in arguments:
          config[argument] = qkeras.quantized_bits(weight_bits, 0, alpha=1)
        if activation_bits is not None and config.get("activation") == "relu":
          config["activation"] = qkeras.quantized_relu(activation_bits,
                                                       _RELU_INTEGER_BITS)
        return getattr(qkeras, q_class).from_config(config)
      if activation_bits is not None and _is_relu(layer):
        max_value = getattr(layer, "max_value", None)
        max_value = None if max_value is None else float(max_value)
        quantizer = qkeras.quantized_relu(
            activation_bits, _RELU_INTEGER_BITS, relu_upper_bound=max_value,
            is_quantized_clip=max_value is None)
        return qkeras.QActivation(quantizer, name=layer.name)
      return None

    return _clone(model, replace)


def _is_relu(layer) -> bool:
  """A plain ReLU layer (ReLU6 included) or Activation('relu')."""
  if type(layer) is tf_keras.layers.ReLU:
    return (not float(layer.negative_slope) and not float(layer.threshold))
  return (type(layer) is tf_keras.layers.Activation and
          getattr(layer.activation, "__name__", "") == "relu")


# ----------------------------------------------------------------------------
# Larq.


class LarqPeer(Peer):
  """Larq quantized layers swapped in layer by layer.

  Kernels: `DoReFa(k_bit=b, mode="weights")`, 2^b levels of
  2·round((tanh(w)/(2·max|tanh w|) + ½)·n)/n − 1, n = 2^b − 1 (one range per
  tensor). Larq quantizes a layer's input rather than an activation's output:
  with activation bits, every quantized layer but those fed by the model
  input gets `DoReFa(k_bit=a)` (clip to [0, 1], round to n levels).
  """

  name = "larq"
  module = "larq"
  distribution = "larq"

  _LAYERS = {
      "Dense": ("QuantDense", ("kernel_quantizer",)),
      "Conv1D": ("QuantConv1D", ("kernel_quantizer",)),
      "Conv2D": ("QuantConv2D", ("kernel_quantizer",)),
      "Conv3D": ("QuantConv3D", ("kernel_quantizer",)),
      "Conv2DTranspose": ("QuantConv2DTranspose", ("kernel_quantizer",)),
      "DepthwiseConv2D": ("QuantDepthwiseConv2D", ("depthwise_quantizer",)),
      "SeparableConv2D": ("QuantSeparableConv2D", ("depthwise_quantizer",
                                                   "pointwise_quantizer")),
  }

  def _check(self, module) -> Optional[str]:
    if not issubclass(module.layers.QuantConv2D, tf_keras.layers.Conv2D):
      return f"larq {self.version()} does not build on tf_keras layers"
    return None

  def unsupported(self, model: tf_keras.Model) -> List[str]:
    return sorted({type(l).__name__ for l in _kernel_layers(model)
                   if type(l).__name__ not in self._LAYERS})

  def build(self, model: tf_keras.Model, weight_bits: int,
            activation_bits: Optional[int] = 8) -> tf_keras.Model:
    _check_bits(weight_bits, activation_bits)
    import larq  # pylint: disable=g-import-not-at-top
    types = {getattr(tf_keras.layers, name): spec
             for name, spec in self._LAYERS.items()}
    # The first layers see the image itself: Larq leaves their input float.
    inputs = {id(t) for t in model.inputs}
    first = {l.name for l in model.layers
             if not isinstance(l, tf_keras.layers.InputLayer) and
             any(id(t) in inputs for t in tf.nest.flatten(l.input))}

    def replace(layer):
      spec = types.get(type(layer))
      if spec is None:
        return None
      q_class, arguments = spec
      config = layer.get_config()
      for argument in arguments:
        config[argument] = larq.quantizers.DoReFa(k_bit=weight_bits,
                                                  mode="weights")
      if activation_bits is not None and layer.name not in first:
        config["input_quantizer"] = larq.quantizers.DoReFa(
            k_bit=activation_bits, mode="activations")
      return getattr(larq.layers, q_class).from_config(config)

    return _clone(model, replace)


PEERS: Tuple[Peer, ...] = (TfmotNBit(), QKerasPeer(), LarqPeer())


def get(name: str) -> Peer:
  """The peer called `name` (`tfmot_nbit`, `qkeras`, `larq`)."""
  for peer in PEERS:
    if peer.name == name:
      return peer
  raise ValueError(f"Unknown peer {name!r}; use one of "
                   f"{', '.join(p.name for p in PEERS)}.")


# ----------------------------------------------------------------------------
# Export.


def export(model: tf_keras.Model,
           representative: Optional[np.ndarray] = None) -> Dict[str, object]:
  """Converts `model` to TFLite (default optimizations) and reads the file.

  Every row of the benchmark goes through this one conversion (kqreg's, which
  writes the ops and tensors `TFLiteConverter.from_keras_model` writes), so
  the peers are compared as a user's plain converter call would treat them:
  fake-quant graphs (tfmot, kqreg) keep their ranges; other graphs are
  quantized by the converter from `representative` (int8) or, without it,
  get dynamic-range int8 weights.

  Returns:
    {"exported": bool, "size_bytes", "kernel_types" ({storage type: count}
    over the weight inputs of conv/dense ops), "kernels" (e.g. "INT4 x5,
    INT8 x1"), "kernel_levels" (most distinct values in one output channel
    of any kernel), "float_ops" (conv/dense ops computing in float),
    "error" (why conversion failed, else "")}.
  """
  row = {"exported": False, "size_bytes": None, "kernel_types": {},
         "kernels": "", "kernel_levels": None, "float_ops": None, "error": ""}
  try:
    with warnings.catch_warnings():
      # "Statistics for quantized inputs were expected": the float input is
      # quantized by the file's own QUANTIZE op, as intended.
      warnings.simplefilter("ignore", UserWarning)
      data = converter.convert(
          model, optimize=True,
          representative=converter.representative(representative, model))
  except Exception as e:  # pylint: disable=broad-except
    # Any failure is the answer for this row (custom ops, unknown layers).
    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return row
  info = flatbuffer.inspect_tflite(data)
  roles = flatbuffer.roles(info)
  kernels = [c for c in info["constants"] if roles[c["index"]] == "weights"]
  types = collections.Counter(c["type"] for c in kernels)
  levels = [flatbuffer.levels(c)[1] for c in kernels if c["type"] != "FLOAT32"]
  float_ops = 0
  for op in info["ops"]:
    if op["op"] in flatbuffer.WEIGHTED_OPS and op["inputs"]:
      if info["tensors"][op["inputs"][0]]["type"] in ("FLOAT32", "FLOAT16"):
        float_ops += 1
  row.update(exported=True, size_bytes=len(data), kernel_types=dict(types),
             kernels=", ".join(f"{t} x{n}" for t, n in sorted(types.items())),
             kernel_levels=max([l for l in levels if l] or [0]) or None,
             float_ops=float_ops)
  return row
