"""Per-layer bit-widths, parameters and storage of a (quantized) model.

Data first (`ModelProfile`, `LayerProfile`), printing on top (`summary`), as
larq's model summary does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tf_keras

from kqreg import _tfmot
from kqreg.qat import families as configs_lib

__all__ = ["LayerProfile", "ModelProfile", "profile", "summary"]

_FLOAT_BITS = 32


@dataclasses.dataclass(frozen=True)
class LayerProfile:
  """One layer's bits and storage.

  Attributes:
    name: layer name (for a quantized layer its wrapper's, quant_<layer>).
    layer_type: class name of the (wrapped) layer.
    weight_bits: bits of its quantized kernels, None if float.
    activation_bits: bits of its activation/output quantizer, None if float.
    params: number of parameters (quantizer ranges not counted).
    quantized_params: parameters stored at `weight_bits`.
    weight_noise: its kernels are noise twins (`n<b>`): they train with the
      noise of `weight_bits` quantization and stay float32 at inference.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> layer = kqreg.qat.profile(kqreg.quantize(model, "w4")).layers[0]
  >>> layer.layer_type, layer.weight_bits, layer.params, layer.quantized_params
  ('Dense', 4, 10, 8)
  """
  name: str
  layer_type: str
  weight_bits: Optional[int]
  activation_bits: Optional[int]
  params: int
  quantized_params: int
  weight_noise: bool = False

  @property
  def float_params(self) -> int:
    return self.params - self.quantized_params

  @property
  def weight_bytes(self) -> float:
    """Storage at the layer's bits; biases, BN and noise twins stay 32-bit."""
    stored = None if self.weight_noise else self.weight_bits
    bits = self.quantized_params * (stored or _FLOAT_BITS)
    return (bits + self.float_params * _FLOAT_BITS) / 8

  @property
  def float32_bytes(self) -> float:
    return self.params * _FLOAT_BITS / 8


@dataclasses.dataclass(frozen=True)
class ModelProfile:
  """Every layer's `LayerProfile` and the totals.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> model_profile = kqreg.qat.profile(kqreg.quantize(model, "w4"))
  >>> type(model_profile).__name__, len(model_profile.layers)
  ('ModelProfile', 1)
  """
  name: str
  layers: List[LayerProfile]

  @property
  def params(self) -> int:
    return sum(l.params for l in self.layers)

  @property
  def quantized_params(self) -> int:
    return sum(l.quantized_params for l in self.layers)

  @property
  def weight_bytes(self) -> float:
    return sum(l.weight_bytes for l in self.layers)

  @property
  def float32_bytes(self) -> float:
    return sum(l.float32_bytes for l in self.layers)

  @property
  def compression(self) -> float:
    """float32 size divided by the size at the layers' bits."""
    return self.float32_bytes / self.weight_bytes if self.weight_bytes else 1.0


def _count(weights) -> int:
  return int(sum(np.prod(w.shape) for w in weights))


def _layer_profile(layer) -> LayerProfile:
  if isinstance(layer, _tfmot.QuantizeWrapper):
    inner, config = layer.layer, layer.quantize_config
    weight_bits = getattr(config, "weight_bits", None)
    activation_bits = getattr(config, "activation_bits", None)
    quantized = [w for w, _, _ in getattr(layer, "_weight_vars", [])]
    if isinstance(config, configs_lib.BitQuantizeConfig):
      has_output = bool(config.get_output_quantizers(inner) or
                        config.get_activations_and_quantizers(inner))
      if not has_output:
        activation_bits = None
      if not quantized:
        weight_bits = None
    # The wrapper owns its quantizer ranges as non-trainable variables, and
    # the wrapped layer no longer tracks the kernels the config swapped out.
    params = _count(layer.trainable_weights) + _count(inner.non_trainable_weights)
    return LayerProfile(layer.name, type(inner).__name__, weight_bits,
                        activation_bits, params, _count(quantized),
                        bool(getattr(config, "weight_noise", False)
                             and weight_bits is not None))
  if isinstance(layer, _tfmot.QuantizeLayer):
    return LayerProfile(layer.name, "QuantizeLayer", None,
                        getattr(layer.quantizer, "num_bits", None), 0, 0)
  return LayerProfile(layer.name, type(layer).__name__, None, None,
                      _count(layer.weights), 0)


def profile(model: tf_keras.Model) -> ModelProfile:
  """The `ModelProfile` of `model`, recursing into nested sub-models.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> [layer.weight_bits for layer in kqreg.qat.profile(model).layers]
  [None]
  """

  def _walk(m):
    for layer in m.layers:
      if isinstance(layer, tf_keras.layers.InputLayer):
        continue
      if isinstance(layer, tf_keras.Model):
        yield from _walk(layer)
      else:
        yield _layer_profile(layer)

  return ModelProfile(model.name, list(_walk(model)))


def _fmt_bits(bits: Optional[int], noise: bool = False) -> str:
  if bits is None:
    return "fp"
  return f"n{bits}" if noise else str(bits)


def summary(model: tf_keras.Model,
            print_fn: Optional[Callable[[str], None]] = None) -> ModelProfile:
  """Prints a per-layer table of bits, parameters and storage; returns it.

  Args:
    model: any Keras model, quantized or not.
    print_fn: called once per line; defaults to `print`.

  Returns:
    The `ModelProfile` that was printed.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> lines = []
  >>> _ = kqreg.summary(kqreg.quantize(model, "w4"), print_fn=lines.append)
  >>> len(lines) > 2
  True
  """
  print_fn = print_fn or print
  prof = profile(model)
  header = ("Layer", "Type", "W bits", "A bits", "Params", "Bytes")
  rows = [(l.name, l.layer_type, _fmt_bits(l.weight_bits, l.weight_noise),
           _fmt_bits(l.activation_bits), f"{l.params:,}",
           f"{l.weight_bytes:,.0f}") for l in prof.layers]
  widths = [max(len(str(r[i])) for r in rows + [header])
            for i in range(len(header))]

  def _line(row):
    cells = [str(c).ljust(w) if i < 2 else str(c).rjust(w)
             for i, (c, w) in enumerate(zip(row, widths))]
    return "  ".join(cells)

  rule = "-" * len(_line(header))
  print_fn(f"Model: {prof.name}")
  print_fn(rule)
  print_fn(_line(header))
  print_fn(rule)
  for row in rows:
    print_fn(_line(row))
  print_fn(rule)
  print_fn(f"Parameters: {prof.params:,} ({prof.quantized_params:,} quantized)")
  print_fn(f"Weight storage: {prof.weight_bytes / 1024:,.1f} KiB at these bits "
           f"vs {prof.float32_bytes / 1024:,.1f} KiB float32 "
           f"({prof.compression:.2f}x smaller)")
  return prof
