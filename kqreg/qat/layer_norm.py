"""A LayerNormalization whose every step TFLite runs in int8.

TFLite's converter turns a LayerNormalization into MEAN, SQUARED_DIFFERENCE,
MEAN, ADD, RSQRT, SUB, MUL and ADD ops. Keras's layer computes them inside
one fused call, so no quantizer sees the tensors between them and the file
runs them in float between a dequantize and a quantize (a transformer's only
float ops). `QuantizableLayerNormalization` computes the same function op by
op, with an identity activation (a range hook) on each tensor between two
ops and on gamma and beta. Its `LayerFamily` quantizes those hooks and its
output, so the converter finds a range on every op's output and keeps each
op in int8, and training rounds where the file rounds. With activation bits,
`kqreg.quantize` swaps a LayerNormalization over the last axis (`swappable`)
for one of these, weights and name kept.
"""

from __future__ import annotations

from typing import Optional, Sequence

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras
from tf_keras.src.utils import control_flow_util  # pylint: disable=g-direct-tensorflow-import

__all__ = ["HOOKS", "QuantizableLayerNormalization", "swappable"]

HOOKS = ("_mean_activation", "_squared_activation", "_variance_activation",
         "_shifted_variance_activation", "_inverse_std_activation",
         "_centered_activation", "_normalized_activation",
         "_gamma_activation", "_scaled_activation", "_beta_activation")
"""The identity activations `QuantizableLayerNormalization` calls on the
mean, the squared differences, the variance, the variance plus epsilon, its
inverse square root, the centered input, the normalized input, gamma, the
scaled input and beta. The last op's output has none: the layer's output
quantizer is its range."""


@tf_keras.utils.register_keras_serializable(package="kqreg")
class QuantizableLayerNormalization(tf_keras.layers.LayerNormalization):
  """`LayerNormalization` over the last axis, computed op by op with range
  hooks where TFLite's int8 kernels need them.

  Same config, weights and outputs as `LayerNormalization` (up to float
  rounding): with m the mean and v the variance over the last axis,
  (x - m) * rsqrt(v + epsilon) * gamma + beta, each of `HOOKS` called on
  its tensor. Normalization over other axes takes Keras's own computation,
  hooks unused.

  Example:
  >>> import numpy as np, kqreg, tf_keras
  >>> x = np.array([[1.0, 2.0, 3.0, 6.0]], np.float32)
  >>> ours = kqreg.qat.QuantizableLayerNormalization()(x)
  >>> keras = tf_keras.layers.LayerNormalization()(x)
  >>> bool(np.allclose(ours, keras, atol=1e-5))
  True
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    for hook in HOOKS:
      setattr(self, hook, tf_keras.activations.linear)

  def _over_last_axis(self, inputs) -> bool:
    rank = inputs.shape.rank
    return (isinstance(inputs, tf.Tensor) and rank is not None and
            list(self.axis) == [rank - 1])

  def call(self, inputs, training=None):
    if not self._over_last_axis(inputs):
      return super().call(inputs)
    if training is None:
      training = tf_keras.backend.learning_phase()
    x = tf.cast(inputs, self.compute_dtype)
    output_dtype = x.dtype
    if output_dtype in (tf.float16, tf.bfloat16) and self.dtype == "float32":
      # As Keras's layer: statistics in float32 under mixed precision (a
      # float16 squared difference overflows past 256).
      x = tf.cast(x, tf.float32)
    mean = self._mean_activation(tf.reduce_mean(x, axis=-1, keepdims=True))
    squared = self._squared_activation(tf.math.squared_difference(x, mean))
    variance = self._variance_activation(
        tf.reduce_mean(squared, axis=-1, keepdims=True))
    shifted = self._shifted_variance_activation(variance + self.epsilon)
    inverse_std = self._inverse_std_activation(
        _rsqrt_saturating(shifted, training))
    outputs = self._centered_activation(x - mean) * inverse_std
    # Every op's output but the last gets its hook; the last one's range is
    # the layer's output quantizer.
    if self.scale or self.center:
      outputs = self._normalized_activation(outputs)
    if self.scale:
      outputs = outputs * self._gamma_activation(tf.cast(self.gamma, x.dtype))
      if self.center:
        outputs = self._scaled_activation(outputs)
    if self.center:
      outputs = outputs + self._beta_activation(tf.cast(self.beta, x.dtype))
    return tf.cast(outputs, output_dtype)


def _rsqrt_saturating(x: tf.Tensor, training) -> tf.Tensor:
  """rsqrt(x), saturating where x is 0 as TFLite's int8 RSQRT does.

  A variance below half a step of its grid rounds to 0 (so does TFLite's
  int8 ADD of epsilon), and int8 RSQRT of 0 saturates at the top of its
  output range. In inference plain rsqrt gives infinity there, which the
  hook after it clips to that top, so the file holds RSQRT alone. In
  training the batch's largest value stands in, so that the range's moving
  average never sees an infinity, nor a gradient a NaN.
  """
  def in_training():
    positive = x > 0
    values = tf.math.rsqrt(tf.where(positive, x, tf.ones_like(x)))
    top = tf.reduce_max(tf.where(positive, values, tf.zeros_like(values)))
    return tf.where(positive, values, tf.stop_gradient(top))

  return control_flow_util.smart_cond(training, in_training,
                                      lambda: tf.math.rsqrt(x))


def swappable(layer: tf_keras.layers.Layer,
              input_shape: Optional[Sequence]) -> bool:
  """True for exactly a `LayerNormalization` (a user's subclass may compute
  otherwise) over the last axis of its one dense input, of `input_shape`,
  without an activity regularizer (its config does not carry one over).

  Example:
  >>> import tf_keras
  >>> from kqreg.qat import layer_norm
  >>> layer_norm.swappable(tf_keras.layers.LayerNormalization(), (None, 6, 8))
  True
  >>> layer_norm.swappable(tf_keras.layers.LayerNormalization(axis=1),
  ...                      (None, 6, 8))
  False
  >>> layer_norm.swappable(
  ...     tf_keras.layers.LayerNormalization(activity_regularizer="l2"),
  ...     (None, 6, 8))
  False
  """
  if (type(layer) is not tf_keras.layers.LayerNormalization or  # pylint: disable=unidiomatic-typecheck
      layer._activity_regularizer is not None):  # pylint: disable=protected-access
    return False
  if input_shape is None or len(input_shape) < 2:
    return False
  rank = len(input_shape)
  axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
  return sorted(a % rank for a in axes) == [rank - 1]
