"""Small models for quick experiments: an MLP and a VGG-style CNN.

Layer names are explicit and unique (`dense1`, `block2_conv1`, `head`, ...) so
bit policies can refer to them and two builds name their layers the same.
Both return logits (no softmax).
"""

from typing import Sequence, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras


def mlp(input_shape: Tuple[int, int, int], num_classes: int, *,
        hidden: Sequence[int] = (256, 128)) -> tf_keras.Model:
  """Flatten -> Dense(units, relu) per entry of `hidden` -> Dense head.

  Layers: `flatten`, `dense1`..`denseN`, `head`. With the preset
  (hidden=(256, 128)) at 32x32x3 input and 10 classes: 820,874 parameters.
  """
  hidden = tuple(hidden)
  if not all(isinstance(u, int) and u > 0 for u in hidden):
    raise ValueError(
        f"mlp hidden={hidden!r}: allowed are positive integer unit counts.")
  inputs = tf_keras.Input(input_shape, name="input")
  x = tf_keras.layers.Flatten(name="flatten")(inputs)
  for i, units in enumerate(hidden, start=1):
    x = tf_keras.layers.Dense(units, activation="relu", name=f"dense{i}")(x)
  outputs = tf_keras.layers.Dense(num_classes, name="head")(x)
  return tf_keras.Model(inputs, outputs, name="mlp")


def cnn(input_shape: Tuple[int, int, int], num_classes: int, *,
        widths: Sequence[int] = (32, 64, 128), convs_per_stage: int = 2,
        dropout: float = 0.0, batch_norm: bool = True,
        bn_momentum: float = 0.8) -> tf_keras.Model:
  """VGG-style CNN: per width a stage of [Conv3x3 -> BN -> ReLU] x n, MaxPool.

  Then GlobalAveragePooling2D -> Dropout (only if `dropout` > 0) -> Dense head.
  Layers: `block{s}_conv{i}`, `block{s}_bn{i}`, `block{s}_relu{i}`,
  `block{s}_pool`, `gap`, `dropout`, `head`. Convs have no bias when followed
  by BN (BN's beta is the bias). `bn_momentum` is 0.8, not Keras' 0.99: the
  moving variance starts at 1 and keeps momentum**steps of it, while the
  first BN's batch variance on [0, 1] images is ~0.003. After 40 steps
  (500 images, 5 epochs of 64) 0.9 keeps 0.015, five times the variance,
  and evaluation collapsed to chance (kqreg_mnist val acc 0.13, 0.997 on
  the same weights in training mode); 0.8 keeps 1.3e-4 (val acc 0.87).
  With the preset at 32x32x3 input and 10 classes: 289,642 parameters
  (288,746 trainable).
  """
  widths = tuple(widths)
  if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
    raise ValueError(f"cnn widths={widths!r}: allowed is a non-empty sequence "
                     "of positive integers.")
  if not isinstance(convs_per_stage, int) or convs_per_stage < 1:
    raise ValueError(f"cnn convs_per_stage={convs_per_stage!r}: allowed is an "
                     "integer >= 1.")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"cnn dropout={dropout!r}: allowed is 0 <= dropout < 1.")
  inputs = tf_keras.Input(input_shape, name="input")
  x = inputs
  for s, width in enumerate(widths, start=1):
    for i in range(1, convs_per_stage + 1):
      x = tf_keras.layers.Conv2D(width, 3, padding="same",
                                 use_bias=not batch_norm,
                                 name=f"block{s}_conv{i}")(x)
      if batch_norm:
        x = tf_keras.layers.BatchNormalization(
            momentum=bn_momentum, name=f"block{s}_bn{i}")(x)
      x = tf_keras.layers.ReLU(name=f"block{s}_relu{i}")(x)
    # Pool only while there is something to halve: keeps small inputs valid.
    if x.shape[1] >= 2 and x.shape[2] >= 2:
      x = tf_keras.layers.MaxPooling2D(name=f"block{s}_pool")(x)
  x = tf_keras.layers.GlobalAveragePooling2D(name="gap")(x)
  if dropout > 0:
    x = tf_keras.layers.Dropout(dropout, name="dropout")(x)
  outputs = tf_keras.layers.Dense(num_classes, name="head")(x)
  return tf_keras.Model(inputs, outputs, name="cnn")
