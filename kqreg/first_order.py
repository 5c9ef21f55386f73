"""The first-order model of weight noise in a linear or conv layer.

For y = w * x with independent zero-mean noise of variance σ_c² on output
channel c's weights, E‖δ * x‖² = Σ_c σ_c² · Σ_positions ‖x_receptive field‖².
`kind` says whether a layer is such a map, `linear` applies it with any
kernel (w, or δ alone), and `receptive_energy` gives the per-channel energy
factor. `noise.propagation` and `sensitivity` both predict from these.
"""

from __future__ import annotations

from typing import Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

__all__ = ["kind", "linear", "receptive_energy"]


def kind(layer) -> Optional[str]:
  """Which linear map `layer` is, if the first-order model covers it.

  Returns "dense", "conv" or "depthwise" (one kernel, channels last), or
  None (transposed and separable convolutions, grouped or channels-first).
  """
  if isinstance(layer, tf_keras.layers.Dense):
    return "dense"
  if isinstance(layer, (tf_keras.layers.Conv2DTranspose,
                        tf_keras.layers.SeparableConv2D)):
    return None
  if getattr(layer, "data_format", "channels_last") != "channels_last":
    return None
  if isinstance(layer, tf_keras.layers.DepthwiseConv2D):
    return "depthwise"
  if isinstance(layer, tf_keras.layers.Conv2D) and layer.groups == 1:
    return "conv"
  return None


def linear(layer, kind: str, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """`layer`'s linear map of `x` by `kernel`: no bias, no activation."""
  if kind == "dense":
    return tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])
  if kind == "depthwise":
    return tf.nn.depthwise_conv2d(x, kernel, (1, *layer.strides, 1),
                                  layer.padding.upper(),
                                  dilations=layer.dilation_rate)
  return tf.nn.conv2d(x, kernel, layer.strides, layer.padding.upper(),
                      dilations=layer.dilation_rate)


def receptive_energy(layer, kind: str, x: tf.Tensor) -> tf.Tensor:
  """Σ over output positions of ‖x over the receptive field‖², per channel.

  Returns a vector over the output channels of the kernel's channels-last
  layout (Dense/Conv2D: out channels; DepthwiseConv2D: in·multiplier).
  """
  x2 = tf.square(tf.cast(x, tf.float32))
  if kind == "dense":
    return tf.fill((layer.units,), tf.reduce_sum(x2))
  kh, kw = layer.kernel_size
  if kind == "depthwise":
    ones = tf.ones((kh, kw, x.shape[-1], layer.depth_multiplier))
    energy = tf.nn.depthwise_conv2d(x2, ones, (1, *layer.strides, 1),
                                    layer.padding.upper(),
                                    dilations=layer.dilation_rate)
    return tf.reduce_sum(energy, axis=(0, 1, 2))
  ones = tf.ones((kh, kw, x.shape[-1], 1))
  energy = tf.nn.conv2d(x2, ones, layer.strides, layer.padding.upper(),
                        dilations=layer.dilation_rate)
  return tf.fill((layer.filters,), tf.reduce_sum(energy))
