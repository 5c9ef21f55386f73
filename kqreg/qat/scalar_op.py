"""Arithmetic with a Python number, as a Keras layer a policy can range.

`x + 3.0` or `x * (1 / 6)` in a Functional model is a `TFOpLambda` layer,
which no layer family matches: under an activation policy its output gets
no range, and TFLite keeps it, and whatever it feeds up to the next range,
in float (MobileNetV3's hard sigmoid, `relu6(x + 3) * (1 / 6)`, left its
depthwise convolutions float). `tf_ops_as_layers` rebuilds such ops as a
`ScalarOp`, which computes the same values and is quantized at its output:
the file runs it as an int8 ADD, SUB or MUL.
"""

from __future__ import annotations

from typing import Callable, Dict

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

__all__ = ["OPS", "ScalarOp"]

OPS: Dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "add": lambda x, c: x + c,
    "subtract": lambda x, c: x - c,
    "subtract_from": lambda x, c: c - x,
    "multiply": lambda x, c: x * c,
}
"""`ScalarOp`'s operations on a tensor x and the number c. Division is left
out: x / c and x * (1 / c) round differently."""


@tf_keras.utils.register_keras_serializable(package="kqreg")
class ScalarOp(tf_keras.layers.Layer):
  """`x + value`, `x - value`, `value - x` or `x * value`, as a layer.

  Args:
    op: a key of `OPS`.
    value: the number (cast to the input's dtype, as TensorFlow does).

  Example:
  >>> import kqreg, tf_keras
  >>> layer = kqreg.qat.ScalarOp("subtract_from", 3.0)
  >>> layer(tf_keras.backend.constant([1.0, 5.0])).numpy().tolist()
  [2.0, -2.0]
  """

  def __init__(self, op: str, value: float, **kwargs):
    super().__init__(**kwargs)
    if op not in OPS:
      raise ValueError(f"op={op!r} is not one of {', '.join(OPS)}.")
    self.op, self.value = op, float(value)

  def call(self, inputs):
    return OPS[self.op](inputs, tf.cast(self.value, inputs.dtype))

  def get_config(self):
    return {**super().get_config(), "op": self.op, "value": self.value}
