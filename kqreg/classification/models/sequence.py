"""Image classifiers that read an image as a sequence: 1-D CNN, LSTM/GRU, ViT.

They take the same (height, width, channels) images as the other presets, so
they train on `kqreg_mnist` as they are: the 1-D CNN and the recurrent models
read the image row by row (sequential MNIST: `height` time steps of
`width * channels` features), the ViT as a grid of patches. They exercise the
layer families a user's audio, sensor or text model has (Conv1D, LSTM, GRU,
MultiHeadAttention, LayerNormalization, Dense on sequences) with offline data.

Layer names are explicit and unique, as in `small.py`; outputs are logits.
"""

from typing import Sequence, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

L = tf_keras.layers


def _positive_ints(name: str, values) -> Tuple[int, ...]:
  values = tuple(values)
  if not values or not all(isinstance(v, int) and v > 0 for v in values):
    raise ValueError(f"{name}={values!r}: allowed is a non-empty sequence of "
                     "positive integers.")
  return values


def _rows(input_shape: Tuple[int, int, int]):
  """The image input and its rows as a (height, width * channels) sequence."""
  height, width, channels = input_shape
  inputs = tf_keras.Input(input_shape, name="input")
  return inputs, L.Reshape((height, width * channels), name="rows")(inputs)


def cnn1d(input_shape: Tuple[int, int, int], num_classes: int, *,
          widths: Sequence[int] = (32, 64), kernel_size: int = 5
          ) -> tf_keras.Model:
  """Rows as time steps -> [Conv1D + ReLU, MaxPool1D] per width -> GAP -> Dense.

  The shape of a keyword-spotting or vibration model. Layers: `rows`,
  `conv{i}`, `pool{i}`, `gap`, `head`. With the preset at 32x32x3 input and
  10 classes: 26,346 parameters.
  """
  widths = _positive_ints("cnn1d widths", widths)
  if not isinstance(kernel_size, int) or kernel_size < 1:
    raise ValueError(f"cnn1d kernel_size={kernel_size!r}: allowed is an "
                     "integer >= 1.")
  inputs, x = _rows(input_shape)
  for i, width in enumerate(widths, start=1):
    x = L.Conv1D(width, kernel_size, padding="same", activation="relu",
                 name=f"conv{i}")(x)
    x = L.MaxPooling1D(2, padding="same", name=f"pool{i}")(x)
  x = L.GlobalAveragePooling1D(name="gap")(x)
  return tf_keras.Model(inputs, L.Dense(num_classes, name="head")(x),
                        name="cnn1d")


def rnn(input_shape: Tuple[int, int, int], num_classes: int, *,
        cell: str = "lstm", units: int = 64, unroll: bool = True
        ) -> tf_keras.Model:
  """Rows as time steps -> LSTM or GRU (last state) -> Dense head.

  `unroll=True` builds the recurrence as `height` copies of the cell: TFLite
  converts that (float arithmetic, kernels stored as Q(w)), while the rolled
  loop does not convert at all (`kqreg.qat.LAYER_FAMILIES`). Layers: `rows`,
  `rnn`, `head`. With the preset (LSTM, 64 units) at 32x32x3 input and 10
  classes: 41,866 parameters (GRU: 31,754).
  """
  layer = {"lstm": L.LSTM, "gru": L.GRU}.get(cell)
  if layer is None:
    raise ValueError(f"rnn cell={cell!r}: allowed are 'lstm' and 'gru'.")
  if not isinstance(units, int) or units < 1:
    raise ValueError(f"rnn units={units!r}: allowed is an integer >= 1.")
  inputs, x = _rows(input_shape)
  x = layer(units, unroll=bool(unroll), name="rnn")(x)
  return tf_keras.Model(inputs, L.Dense(num_classes, name="head")(x),
                        name=cell)


def vit(input_shape: Tuple[int, int, int], num_classes: int, *,
        patch_size: int = 4, dim: int = 64, depth: int = 2, heads: int = 4,
        mlp_ratio: int = 2) -> tf_keras.Model:
  """A small Vision Transformer (Dosovitskiy et al. 2021), pre-norm blocks.

  Patches: a `patch_size`-strided Conv2D. Positions: a 3x3 depthwise
  convolution over the patch grid added to the patches (CPVT's positional
  encoding generator, Chu et al. 2023) instead of a learned table, so every
  layer is one kqreg quantizes. Then `depth` blocks of [LayerNorm ->
  MultiHeadAttention -> add, LayerNorm -> EinsumDense(GELU) -> EinsumDense
  -> add], a LayerNorm, average over tokens and a Dense head. Layers: `patches`,
  `position`, `tokens`, `block{i}_{ln1,mha,add1,ln2,mlp1,mlp2,add2}`, `ln`,
  `gap`, `head`. With the preset at 32x32x3 input and 10 classes: 71,498
  parameters.
  """
  for name, value in (("patch_size", patch_size), ("dim", dim),
                      ("depth", depth), ("heads", heads),
                      ("mlp_ratio", mlp_ratio)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"vit {name}={value!r}: allowed is an integer >= 1.")
  height, width, _ = input_shape
  if height % patch_size or width % patch_size:
    raise ValueError(f"vit patch_size={patch_size}: must divide the image "
                     f"size {height}x{width}.")
  if dim % heads:
    raise ValueError(f"vit dim={dim}: must be a multiple of heads={heads}.")
  inputs = tf_keras.Input(input_shape, name="input")
  grid = L.Conv2D(dim, patch_size, strides=patch_size, name="patches")(inputs)
  position = L.DepthwiseConv2D(3, padding="same", name="position")(grid)
  grid = L.Add(name="with_position")([grid, position])
  tokens = (height // patch_size) * (width // patch_size)
  x = L.Reshape((tokens, dim), name="tokens")(grid)
  for i in range(1, depth + 1):
    y = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(x)
    y = L.MultiHeadAttention(heads, dim // heads, name=f"block{i}_mha")(y, y)
    x = L.Add(name=f"block{i}_add1")([x, y])
    y = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(x)
    # EinsumDense: the integer FULLY_CONNECTED TFLite runs (kqreg.quantize
    # rebuilds a Dense on a sequence as this same einsum).
    y = L.EinsumDense("btd,dh->bth", (tokens, dim * mlp_ratio),
                      bias_axes="h",
                      activation="gelu", name=f"block{i}_mlp1")(y)
    y = L.EinsumDense("bth,hd->btd", (tokens, dim), bias_axes="d",
                      name=f"block{i}_mlp2")(y)
    x = L.Add(name=f"block{i}_add2")([x, y])
  x = L.LayerNormalization(epsilon=1e-6, name="ln")(x)
  x = L.GlobalAveragePooling1D(name="gap")(x)
  return tf_keras.Model(inputs, L.Dense(num_classes, name="head")(x),
                        name="vit")
