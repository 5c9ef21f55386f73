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


_NOT_COVERED = (
    tf_keras.layers.Conv1DTranspose, tf_keras.layers.Conv2DTranspose,
    tf_keras.layers.Conv3DTranspose, tf_keras.layers.SeparableConv1D,
    tf_keras.layers.SeparableConv2D, tf_keras.layers.DepthwiseConv1D)


def kind(layer) -> Optional[str]:
  """Which linear map `layer` is, if the first-order model covers it.

  Returns "dense", "conv" (Conv1D, Conv2D, Conv3D), "depthwise"
  (DepthwiseConv2D), "einsum" (an EinsumDense whose kernel's last axis is
  an output axis) or "embedding" (a table lookup: linear in the table) for
  layers with one kernel, channels last; else None: transposed, separable
  and 1-D depthwise convolutions, grouped, causal or channels-first ones,
  and layers with several kernels (LSTM, GRU, MultiHeadAttention), whose
  output is not one linear map of one kernel.
  """
  if isinstance(layer, tf_keras.layers.Dense):
    return "dense"
  if isinstance(layer, tf_keras.layers.EinsumDense):
    return "einsum" if _einsum_channel_axis(layer) is not None else None
  if isinstance(layer, tf_keras.layers.Embedding):
    return "embedding"
  if isinstance(layer, _NOT_COVERED):
    return None
  if getattr(layer, "data_format", "channels_last") != "channels_last":
    return None
  if isinstance(layer, tf_keras.layers.DepthwiseConv2D):
    return "depthwise"
  if (isinstance(layer, (tf_keras.layers.Conv1D, tf_keras.layers.Conv2D,
                         tf_keras.layers.Conv3D)) and layer.groups == 1 and
      layer.padding != "causal"):
    return "conv"
  return None


def _einsum_channel_axis(layer) -> Optional[int]:
  """The output axis of an EinsumDense kernel's last axis, or None."""
  equation = layer.equation.replace(" ", "")
  if "..." in equation or "->" not in equation:
    return None
  inputs, output = equation.split("->")
  operands = inputs.split(",")
  if len(operands) != 2 or not operands[1]:
    return None
  channel = operands[1][-1]
  return output.index(channel) if channel in output else None


def linear(layer, kind: str, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """`layer`'s linear map of `x` by `kernel`: no bias, no activation."""
  if kind == "dense":
    return tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])
  if kind == "einsum":
    return tf.einsum(layer.equation, x, kernel)
  if kind == "embedding":
    return tf.gather(kernel, tf.cast(x, tf.int32))
  if kind == "depthwise":
    return tf.nn.depthwise_conv2d(x, kernel, (1, *layer.strides, 1),
                                  layer.padding.upper(),
                                  dilations=layer.dilation_rate)
  if kernel.shape.rank != 4:  # Conv1D, Conv3D
    return tf.nn.convolution(x, kernel, layer.strides, layer.padding.upper(),
                             dilations=layer.dilation_rate)
  return tf.nn.conv2d(x, kernel, layer.strides, layer.padding.upper(),
                      dilations=layer.dilation_rate)


def receptive_energy(layer, kind: str, x: tf.Tensor) -> tf.Tensor:
  """Σ over output positions of ‖x over the receptive field‖², per channel.

  Returns a vector over the output channels of the kernel's channels-last
  layout (Dense/Conv: out channels; DepthwiseConv2D: in·multiplier;
  EinsumDense: its kernel's last axis; Embedding: the embedding dimension).
  """
  if kind == "embedding":  # each looked-up row adds its own noise
    return tf.fill((layer.output_dim,), tf.cast(tf.size(x), tf.float32))
  x2 = tf.square(tf.cast(x, tf.float32))
  if kind == "dense":
    return tf.fill((layer.units,), tf.reduce_sum(x2))
  if kind == "einsum":
    energy = tf.einsum(layer.equation, x2, tf.ones(layer.kernel.shape))
    axis = _einsum_channel_axis(layer)
    return tf.reduce_sum(energy, axis=[a for a in range(energy.shape.rank)
                                       if a != axis])
  if kind == "conv" and len(layer.kernel_size) != 2:  # Conv1D, Conv3D
    ones = tf.ones((*layer.kernel_size, x.shape[-1], 1))
    energy = tf.nn.convolution(x2, ones, layer.strides, layer.padding.upper(),
                               dilations=layer.dilation_rate)
    return tf.fill((layer.filters,), tf.reduce_sum(energy))
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
