"""Which layers a policy quantizes, and what their kernels cost in the file.

`quantizable_layers` lists the layers whose weight bits a search may choose
(with the pins and skips of a base policy); `stored_bytes` is what a kernel
takes in kqreg's .tflite export at b bits. `kqreg.sensitivity` measures
these layers and `kqreg.allocate` prices them.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple, Union

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tf_keras

from kqreg import _tfmot
from kqreg.qat import families as configs_lib
from kqreg.qat import policy as policy_lib
from kqreg.qat.rewrites import flatten_nested
from kqreg.qat.introspect import is_quantized
from kqreg.qat import introspect

__all__ = ["QuantizableLayer", "quantizable_layers", "stored_bytes",
           "storage_type"]


def stored_bytes(params: int, bits: int, int4: bool) -> int:
  """Bytes of a `params`-element kernel at `bits` in kqreg's .tflite export.

  `export_tflite` stores <= 4-bit kernels as packed INT4 (two per byte) and
  5..8-bit ones as INT8 (`kqreg.export.convert`); a weight-only model (no
  activation quantizer anywhere) is calibrated by the converter, which
  stores every kernel as INT8 (`int4=False`). Kernel data only: the float32
  scale per channel, the zero points and the int32 biases are not counted.
  """
  if int4 and bits <= 4:
    return (int(params) + 1) // 2
  return int(params)


def storage_type(bits: int, int4: bool) -> str:
  """"INT4" or "INT8": the tensor type `stored_bytes` counts."""
  return "INT4" if int4 and bits <= 4 else "INT8"


@dataclasses.dataclass(frozen=True)
class QuantizableLayer:
  """One layer whose kernels a policy quantizes.

  Attributes:
    name: the layer's name (the wrapped layer's for a QAT model), as a
      policy names it.
    layer_type: its class name.
    params: kernel elements (biases not counted).
    bits: the `Bits` the base policy resolves it to.
    pinned: an override of the base policy (not its default token) sets its
      bits: `first=`, `last=`, a name, glob or class.

  Example:
  >>> import kqreg, tf_keras, numpy as np
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
  ...     tf_keras.layers.Dense(8, name="a"), tf_keras.layers.Dense(2, name="b")])
  >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
  >>> layers, int4 = kqreg.mixed_precision.quantizable_layers(model, "w8a8")
  >>> layers[0].name, layers[0].layer_type, layers[0].params, layers[0].pinned
  ('a', 'Dense', 32, False)
  """
  name: str
  layer_type: str
  params: int
  bits: policy_lib.Bits
  pinned: bool


def _resolve(layers: Sequence, weighted: Sequence, policy: policy_lib.BitPolicy
             ) -> Dict[str, policy_lib.Bits]:
  """Layer name -> bits under `policy`, as `quantize.plan` resolves them."""
  first = weighted[0].name if weighted else None
  last = weighted[-1].name if weighted else None
  return {l.name: policy.bits_for(l, is_first=l.name == first,
                                  is_last=l.name == last) for l in layers}


def _is_weighted(layer) -> bool:
  family = configs_lib.family_of(layer)
  return family is not None and family.weighted


def _graph_layers(model: tf_keras.Model) -> Tuple[tf_keras.Model, List]:
  """(the flat model, its layers as a policy sees them: wrappers unwrapped)."""
  if is_quantized(model):
    flat = model
  else:
    flat = flatten_nested(model)
  layers = []
  for layer in flat.layers:
    if isinstance(layer, (tf_keras.layers.InputLayer, _tfmot.QuantizeLayer)):
      continue
    layers.append(layer.layer if isinstance(layer, _tfmot.QuantizeWrapper)
                  else layer)
  return flat, layers


def _kernel_params(model: tf_keras.Model) -> Dict[str, int]:
  """Layer name -> kernel elements of every layer kqreg can quantize."""
  if is_quantized(model):
    found: Dict[str, int] = {}
    for qw in introspect.quantized_weights(model):
      found[qw.layer_name] = found.get(qw.layer_name, 0) + int(
          np.prod(qw.weight.shape))
    return found
  _, layers = _graph_layers(model)
  return {l.name: sum(int(np.prod(configs_lib.resolve(l, attr).shape))
                      for attr, _ in configs_lib.family_of(l).weights)
          for l in layers if _is_weighted(l)}


def quantizable_layers(model: tf_keras.Model,
                       base: Union[None, str, policy_lib.BitPolicy] = None
                       ) -> Tuple[List[QuantizableLayer], bool]:
  """The layers whose weight bits can be chosen, and whether INT4 is stored.

  Args:
    model: a float model, or a QAT model from `kqreg.quantize` (then only
      its layers with weight quantizers count).
    base: a `BitPolicy` or its string. Its `skip` patterns and overrides to
      float weights leave layers out; its other overrides pin layers; the
      default token's weight bits are ignored (its activation bits are
      not). None: every quantizable layer is free (for a QAT model: weight
      bits as trained, storage as its activation quantizers imply).

  Returns:
    (layers in graph order, int4): `int4` is True when the exported file
    stores <= 4-bit kernels as INT4, i.e. when some activation is quantized
    (see `stored_bytes`).

  Raises:
    PolicyError: `base` is malformed or names layers the model lacks.

  Example:
  >>> import kqreg, tf_keras, numpy as np
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
  ...     tf_keras.layers.Dense(8, name="a"), tf_keras.layers.Dense(2, name="b")])
  >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
  >>> layers, int4 = kqreg.mixed_precision.quantizable_layers(model, "w8,last=w8")
  >>> [(layer.name, layer.pinned) for layer in layers], int4
  ([('a', False), ('b', True)], False)
  """
  _, layers = _graph_layers(model)
  params = _kernel_params(model)
  weighted = [l for l in layers if _is_weighted(l)]
  if base is None:
    if is_quantized(model):
      from kqreg.export import exportable as model_info
      int4 = bool(model_info.activation_bits(model))
    else:
      int4 = False
    bits = {l.name: policy_lib.Bits(8) for l in layers}
    pinned = {l.name: False for l in layers}
  else:
    base = policy_lib.BitPolicy.parse(base)
    if base.default.weight is None:
      # `fp` or `a8`: the layers its default reaches are free all the same;
      # their weight bits are what is being chosen.
      base = dataclasses.replace(
          base, default=policy_lib.Bits(8, base.default.activation))
    base.check_against(layers)
    bits = _resolve(layers, weighted, base)
    # A layer the default token reaches changes with it; a pinned one not.
    other = 2 if base.default.weight != 2 else 3
    moved = _resolve(layers, weighted, dataclasses.replace(
        base, default=dataclasses.replace(base.default, weight=other)))
    pinned = {name: moved[name] == bits[name] for name in bits}
    int4 = any(bits[l.name].activation is not None for l in layers
               if configs_lib.family_of(l) is not None)
  found = [QuantizableLayer(l.name, type(l).__name__, params[l.name],
                            bits[l.name], pinned[l.name])
           for l in weighted
           if l.name in params and bits[l.name].weight is not None]
  return found, int4
