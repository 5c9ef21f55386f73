"""kqreg's tfmot `QuantizeScheme`: `annotate` + tfmot's `quantize_apply`.

`kqreg.quantize` builds its QAT model in one pass over the graph. The same
model comes out of tfmot's own pipeline, for code built around it:

```python
from kqreg.qat import annotate, plan
with kqreg.quantize_scope():
  qat = tfmot.quantization.keras.quantize_apply(
      annotate(model, "w4a8"),
      scheme=QuantizeScheme(plan(model, "w4a8").input_bits))
```

The scheme quantizes only what the annotations name: unlike tfmot's default
8-bit scheme it adds no 8-bit input or output quantizer behind your back, so
a weight-only policy (`w4`) really leaves every activation float. With
`input_bits` it puts one `input_bits` activation quantizer after each model
input, as `quantize` does.
"""

from __future__ import annotations

from typing import Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg import _tfmot
from kqreg.qat import quantizers

__all__ = ["QuantizeScheme"]


class _NothingByDefaultRegistry(_tfmot.QuantizeRegistry):
  """kqreg quantizes only what its plan names; nothing is added by default."""

  def get_quantize_config(self, layer):
    return None

  def supports(self, layer):
    return False


class _InputQuantize(_tfmot.transforms.Transform):
  """InputLayer => InputLayer -> QuantizeLayer(b-bit)."""

  def __init__(self, bits: int):
    self._bits = bits

  def pattern(self):
    return _tfmot.transforms.LayerPattern("InputLayer")

  def replacement(self, match_layer):
    quant_layer = _tfmot.QuantizeLayer(
        quantizers.ActivationQuantizer(self._bits))
    layer_config = tf_keras.layers.serialize(quant_layer)
    layer_config["name"] = quant_layer.name
    return _tfmot.transforms.LayerNode(layer_config, input_layers=[match_layer])

  def custom_objects(self):
    return {"QuantizeLayer": _tfmot.QuantizeLayer,
            "ActivationQuantizer": quantizers.ActivationQuantizer}


class _LayoutTransform(_tfmot.QuantizeLayoutTransform):

  def __init__(self, input_bits: Optional[int]):
    self._input_bits = input_bits

  def apply(self, model, layer_quantize_map):
    if self._input_bits is None:
      return model, layer_quantize_map
    # tfmot lists an input only when its first consumer is annotated; an input
    # feeding a Flatten (an MLP) would stay float, so list every input.
    for input_layer in model._input_layers:  # pylint: disable=protected-access
      layer_quantize_map.setdefault(input_layer.name, {})
    return _tfmot.ModelTransformer(
        model, [_InputQuantize(self._input_bits)],
        set(layer_quantize_map.keys()), layer_quantize_map).transform()


class QuantizeScheme(_tfmot.QuantizeScheme):
  """Nothing quantized but the annotated layers, plus an optional input
  quantizer.

  Args:
    input_bits: bits of the quantizer after each input (a plan's
      `input_bits`), None to keep the inputs float.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> import tensorflow_model_optimization as tfmot
  >>> annotated = kqreg.qat.annotate(model, "w4")
  >>> with kqreg.quantize_scope():
  ...   qat = tfmot.quantization.keras.quantize_apply(
  ...       annotated, scheme=kqreg.qat.QuantizeScheme(input_bits=None))
  >>> kqreg.qat.is_quantized(qat)
  True
  """

  def __init__(self, input_bits: Optional[int] = None):
    self._input_bits = input_bits

  def get_layout_transformer(self):
    return _LayoutTransform(self._input_bits)

  def get_quantize_registry(self):
    return _NothingByDefaultRegistry()
