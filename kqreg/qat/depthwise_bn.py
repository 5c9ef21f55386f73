"""A BatchNormalization that TFLite runs as one int8 depthwise convolution.

TFLite's converter folds a BatchNormalization into the Conv or Dense just
before it. One after anything else (a pool, a concatenation, an addition:
the pre-activation BNs of DenseNet and ResNetV2) becomes a float MUL and ADD
with no range between them, with a dequantize before and a quantize after.
`DepthwiseBatchNormalization` trains as Keras's layer does. At inference it
computes the same per-channel map, x * s + b, as a 1x1 depthwise convolution
whose kernel is s on an 8-bit per-channel grid. Each channel's grid ends at
its own |s|, so it holds s exactly: the values are the float layer's up to
rounding, and the file runs one int8 DEPTHWISE_CONV_2D, its bias fused.
"""

from __future__ import annotations

import functools
from typing import Sequence, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras
from tf_keras.src.utils import control_flow_util  # pylint: disable=g-direct-tensorflow-import

from kqreg.qat import families

__all__ = ["DepthwiseBatchNormalization", "swappable"]

layers = tf_keras.layers


@tf_keras.utils.register_keras_serializable(package="kqreg")
class DepthwiseBatchNormalization(layers.BatchNormalization):
  """Keras's BatchNormalization on channels-last images, whose inference
  TFLite runs as an int8 1x1 DEPTHWISE_CONV_2D.

  Same arguments, weights and training as `BatchNormalization`; at
  inference, `affine()` as a depthwise convolution with the scale on its
  8-bit per-channel grid (which holds it exactly). `kqreg.quantize` swaps a
  BatchNormalization that no conv or dense folds into for this layer
  (`swappable`).

  Example:
  >>> import numpy as np, kqreg, tf_keras
  >>> layer = kqreg.qat.DepthwiseBatchNormalization(
  ...     moving_mean_initializer="ones",
  ...     gamma_initializer=tf_keras.initializers.Constant(2.0))
  >>> x = np.full((1, 2, 2, 3), 4.0, np.float32)
  >>> # (4 - 1) * 2 / sqrt(1 + 0.001), its epsilon
  >>> float(layer(x, training=False)[0, 0, 0, 0])
  5.997...
  """

  def call(self, inputs, training=None, mask=None):
    training = self._get_training_value(training)
    trained = functools.partial(super().call, inputs, training=True,
                                mask=mask)
    return control_flow_util.smart_cond(training, trained,
                                        lambda: self._depthwise(inputs))

  def affine(self) -> Tuple[tf.Tensor, tf.Tensor]:
    """`(s, b)` of the inference map x * s + b, one of each per channel."""
    scale = tf.math.rsqrt(self.moving_variance + self.epsilon)
    if self.scale:
      scale *= self.gamma
    offset = -self.moving_mean * scale
    if self.center:
      offset += self.beta
    return scale, offset

  def _depthwise(self, inputs: tf.Tensor) -> tf.Tensor:
    scale, offset = self.affine()
    # Each channel's range ends at |s| itself, so s sits on the grid (level
    # 127 of 254); a zero scale (gamma 0) gets a tiny range and stays 0.
    peak = tf.maximum(tf.abs(scale), 1e-30)
    kernel = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.reshape(scale, [1, 1, 1, -1]), -peak, peak, num_bits=8,
        narrow_range=True)
    outputs = tf.nn.depthwise_conv2d(
        tf.cast(inputs, scale.dtype), tf.reshape(kernel, [1, 1, -1, 1]),
        strides=[1, 1, 1, 1], padding="VALID")
    return tf.nn.bias_add(outputs, offset)


def swappable(layer: tf_keras.layers.Layer,
              inbound: Sequence[tf_keras.layers.Layer],
              input_shape) -> bool:
  """True for a plain BatchNormalization over the channels of images
  (`input_shape` rank 4) that the converter cannot fold into the one layer
  before it (`inbound`).

  Example:
  >>> import tf_keras
  >>> from kqreg.qat import depthwise_bn
  >>> bn = tf_keras.layers.BatchNormalization()
  >>> pool = tf_keras.layers.AveragePooling2D()
  >>> bn(pool(tf_keras.Input((4, 4, 2)))).shape
  TensorShape([None, 2, 2, 2])
  >>> depthwise_bn.swappable(bn, [pool], (None, 2, 2, 2))
  True
  >>> conv = tf_keras.layers.Conv2D(2, 1)
  >>> depthwise_bn.swappable(bn, [conv], (None, 2, 2, 2))
  False
  """
  if type(layer) is not layers.BatchNormalization:  # pylint: disable=unidiomatic-typecheck
    return False
  if (layer.renorm or layer.virtual_batch_size is not None or
      layer.adjustment is not None or getattr(layer, "synchronized", False)):
    return False
  if len(inbound) != 1 or len(tuple(input_shape)) != 4:
    return False
  if list(layer.axis) not in ([3], [-1]):
    return False
  return not families.folds_batch_norm(inbound[0])
