"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", section 4.2).

depth = 6n + 2: a 3x3 stem conv, three stages of n basic blocks (two 3x3
convs each) at base_width, 2x and 4x channels (the later stages start with
stride 2), global average pooling and a Dense head. Where a block changes
shape the shortcut is option B, a 1x1 strided conv + BN projection (the
paper's CIFAR nets use option A, zero padding; a conv quantizes like every
other conv, whereas padding+slicing does not map to a TFLite-fusable op).
"""

from typing import Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

_INIT = "he_normal"  # the paper's initialisation (He et al. 2015)


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str,
             relu: bool, bn_momentum: float):
  x = tf_keras.layers.Conv2D(filters, kernel, strides=stride, padding="same",
                             use_bias=False, kernel_initializer=_INIT,
                             name=f"{name}_conv")(x)
  x = tf_keras.layers.BatchNormalization(momentum=bn_momentum,
                                         name=f"{name}_bn")(x)
  if relu:
    x = tf_keras.layers.ReLU(name=f"{name}_relu")(x)
  return x


def _basic_block(x, filters: int, stride: int, name: str, bn_momentum: float):
  shortcut = x
  if stride != 1 or x.shape[-1] != filters:
    shortcut = _conv_bn(x, filters, 1, stride, f"{name}_shortcut", relu=False,
                        bn_momentum=bn_momentum)
  y = _conv_bn(x, filters, 3, stride, f"{name}_1", relu=True,
               bn_momentum=bn_momentum)
  y = _conv_bn(y, filters, 3, 1, f"{name}_2", relu=False,
               bn_momentum=bn_momentum)
  y = tf_keras.layers.Add(name=f"{name}_add")([shortcut, y])
  return tf_keras.layers.ReLU(name=f"{name}_out")(y)


def resnet(input_shape: Tuple[int, int, int], num_classes: int, *,
           depth: int = 20, base_width: int = 16,
           bn_momentum: float = 0.8) -> tf_keras.Model:
  """CIFAR ResNet-`depth` (20, 32, 44, 56, 110, ...), logits out.

  Layers: `conv1_conv/_bn/_relu` stem; per block `stage{s}_block{b}_1_conv`,
  `..._1_bn`, `..._1_relu`, `..._2_conv`, `..._2_bn`, `..._add`, `..._out`,
  plus `..._shortcut_conv/_bn` on the first block of stages 2 and 3;
  `gap`, `head`. ResNet-20 has 19 convs + 1 Dense on the main path and 2
  projection convs. At 32x32x3 input and 10 classes ResNet-20 (base_width=16)
  has 274,042 parameters (272,474 trainable). BN momentum 0.8 (see `cnn`).

  Raises:
    ValueError: depth is not 6n + 2 with n >= 1, or base_width < 1.
  """
  if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
    raise ValueError(f"resnet depth={depth!r}: allowed are 6n+2 with n >= 1 "
                     "(8, 14, 20, 32, 44, 56, 110, ...).")
  if not isinstance(base_width, int) or base_width < 1:
    raise ValueError(f"resnet base_width={base_width!r}: allowed is a "
                     "positive integer.")
  blocks = (depth - 2) // 6
  inputs = tf_keras.Input(input_shape, name="input")
  x = _conv_bn(inputs, base_width, 3, 1, "conv1", relu=True,
               bn_momentum=bn_momentum)
  for s in range(3):
    for b in range(blocks):
      stride = 2 if s > 0 and b == 0 else 1
      x = _basic_block(x, base_width * 2**s, stride,
                       f"stage{s + 1}_block{b + 1}", bn_momentum)
  x = tf_keras.layers.GlobalAveragePooling2D(name="gap")(x)
  outputs = tf_keras.layers.Dense(num_classes, kernel_initializer=_INIT,
                                  name="head")(x)
  return tf_keras.Model(inputs, outputs, name=f"resnet{depth}")
