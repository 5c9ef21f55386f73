"""ImageNet architectures from `tf_keras.applications`, randomly initialised.

Weights are never downloaded (`weights=None`); the classifier returns logits
(`classifier_activation=None`). The applications accept only 3-channel inputs
of at least 32x32, so other inputs get a small adapter in front:

* channels != 3: a 1x1 Conv2D `adapter_conv` maps them to 3 channels;
* height or width < 32: `adapter_resize` (bilinear Resizing) enlarges that
  side to 32.

The result is one flat Functional model (the application is built on the
adapter's output via `input_tensor`, not nested), so every layer keeps the
application's own unique name (`Conv1`, `conv2_block1_1_conv`, ...) and bit
policies can name it. Keras warns that non-224 sizes have no pretrained
weights; that is expected here.
"""

import warnings
from typing import Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

_MIN_SIZE = 32  # smallest input both applications accept


def _adapted_input(input_shape: Tuple[int, int, int]):
  """Returns (Input, tensor the application starts from, its shape)."""
  height, width, channels = input_shape
  inputs = tf_keras.Input(input_shape, name="input")
  x = inputs
  if channels != 3:
    x = tf_keras.layers.Conv2D(3, 1, name="adapter_conv")(x)
  if height < _MIN_SIZE or width < _MIN_SIZE:
    height, width = max(height, _MIN_SIZE), max(width, _MIN_SIZE)
    x = tf_keras.layers.Resizing(height, width, name="adapter_resize")(x)
  return inputs, x, (height, width, 3)


def _build(app, name: str, input_shape, num_classes: int,
           **kwargs) -> tf_keras.Model:
  inputs, x, shape = _adapted_input(input_shape)
  with warnings.catch_warnings():
    # "input shape not in [96, 128, ...], loading 224 weights" is moot with
    # weights=None.
    warnings.simplefilter("ignore", UserWarning)
    model = app(input_tensor=x, input_shape=shape, weights=None,
                classes=num_classes, classifier_activation=None, **kwargs)
  # Re-wrapped from our Input so the adapter layers are part of the model.
  return tf_keras.Model(inputs, model.outputs, name=name)


def _set_bn_momentum(model: tf_keras.Model,
                     momentum: Optional[float]) -> tf_keras.Model:
  """Sets `momentum` on every BatchNormalization (None: Keras' own)."""
  if momentum is not None:
    for layer in model.layers:
      if isinstance(layer, tf_keras.layers.BatchNormalization):
        layer.momentum = momentum  # in its config: clones keep it
  return model


def mobilenetv2(input_shape: Tuple[int, int, int], num_classes: int, *,
                alpha: float = 0.35,
                bn_momentum: Optional[float] = None) -> tf_keras.Model:
  """MobileNetV2 (Sandler et al. 2018) at width multiplier `alpha`.

  At 32x32x3 input and 10 classes with alpha=0.35: 423,018 parameters
  (408,938 trainable). `bn_momentum` replaces Keras' 0.999 in every
  BatchNormalization: at 0.999 the moving statistics need thousands of
  steps, and a short run evaluates on statistics still near their
  initial values (one class predicted).
  """
  return _set_bn_momentum(
      _build(tf_keras.applications.MobileNetV2, "mobilenetv2", input_shape,
             num_classes, alpha=alpha), bn_momentum)


def resnet50(input_shape: Tuple[int, int, int], num_classes: int, *,
             bn_momentum: Optional[float] = None) -> tf_keras.Model:
  """ResNet-50 v1 (He et al. 2016, ImageNet variant).

  At 32x32x3 input and 10 classes: 23,608,202 parameters (23,555,082
  trainable). `bn_momentum` replaces Keras' 0.99 in every
  BatchNormalization (see `mobilenetv2`).
  """
  return _set_bn_momentum(
      _build(tf_keras.applications.ResNet50, "resnet50", input_shape,
             num_classes), bn_momentum)
