"""MultiHeadAttention computed as TFLite's integer kernels run it.

Keras's `MultiHeadAttention` projects with 4-D einsums whose bias spans two
axes, and scales, scores and normalizes between ranges no quantizer sees: the
converter keeps its FULLY_CONNECTED, BATCH_MATMUL and SOFTMAX in float.
`QuantizableMultiHeadAttention` computes the same function in the shape the
converter keeps in int8: each projection a 2-D matmul with its bias, and an
identity activation (a range hook) on the scaled query, the scores, the
probabilities and the context. Its `LayerFamily` quantizes those hooks; the
probabilities on the grid TFLite fixes for SOFTMAX (scale 1/256, zero point
-128). With activation bits (and `integer_attention=True`, the default),
`kqreg.quantize` swaps a `MultiHeadAttention` it can compute this way
(`swappable`) for one of these, weights and name kept.
"""

from __future__ import annotations

import math

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

__all__ = ["QuantizableMultiHeadAttention", "HOOKS", "PROBABILITY_HOOK",
           "as_quantizable", "build_projections", "swappable"]

PROBABILITY_HOOK = "_probability_activation"
HOOKS = ("_scaled_query_activation", "_score_activation", PROBABILITY_HOOK,
         "_context_activation")
"""The identity activations `QuantizableMultiHeadAttention` calls on the
scaled query, the scores, the probabilities and the context, in that order."""


@tf_keras.utils.register_keras_serializable(package="kqreg")
class QuantizableMultiHeadAttention(tf_keras.layers.MultiHeadAttention):
  """`MultiHeadAttention` with range hooks where TFLite's int8 kernels need them.

  Same config, weights and outputs as `MultiHeadAttention` (up to float
  rounding). On rank-3 inputs with the default attention axis it computes:
  q, k, v = x W + b as 2-D matmuls; q / sqrt(key_dim); scores q kᵀ; softmax;
  context p v; output projection, with each of `HOOKS` called on its tensor.
  Other inputs (ragged, higher rank, custom `attention_axes`) take Keras's
  own computation, hooks unused.

  Example:
  >>> import kqreg, tf_keras
  >>> x = tf_keras.Input((6, 8))
  >>> layer = kqreg.qat.QuantizableMultiHeadAttention(2, 4)
  >>> layer(x, x).shape.as_list()
  [None, 6, 8]
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    for hook in HOOKS:
      setattr(self, hook, tf_keras.activations.linear)

  def _takes_flat_path(self, query, value, key) -> bool:
    tensors = [t for t in (query, value, key) if t is not None]
    return (all(isinstance(t, tf.Tensor) and t.shape.rank == 3
                for t in tensors) and _flat_settings(self))

  @staticmethod
  def _project(dense, x, input_axes: int):
    """`dense` (an EinsumDense) on `x` as one 2-D matmul with its bias."""
    if not dense.built:  # named as its own call would name it
      with tf.name_scope(dense.name):
        dense.build(x.shape)
    kernel = dense.kernel
    inner = math.prod(kernel.shape[:input_axes])
    outer = math.prod(kernel.shape[input_axes:])
    y = tf.matmul(tf.reshape(x, (-1, inner)), tf.reshape(kernel, (inner, outer)))
    if dense.bias is not None:
      y = y + tf.reshape(dense.bias, (outer,))
    y = dense.activation(y)
    leading = x.shape[1:-input_axes]
    if None in leading:
      shape = tf.concat([tf.shape(x)[:-input_axes], kernel.shape[input_axes:]],
                        0)
    else:  # static: the file gets one RESHAPE, not a shape computation
      shape = [-1, *leading, *kernel.shape[input_axes:]]
    return tf.reshape(y, shape)

  def call(self, query, value, key=None, attention_mask=None,
           return_attention_scores=False, training=None,
           use_causal_mask=False):
    if not self._built_from_signature:
      self._build_from_signature(query=query, value=value, key=key)
    if not self._takes_flat_path(query, value, key):
      return super().call(query, value, key=key,
                          attention_mask=attention_mask,
                          return_attention_scores=return_attention_scores,
                          training=training, use_causal_mask=use_causal_mask)
    key = value if key is None else key
    attention_mask = self._compute_attention_mask(
        query, value, key=key, attention_mask=attention_mask,
        use_causal_mask=use_causal_mask)
    heads_first = (0, 2, 1, 3)  # [B, T, N, H] <-> [B, N, T, H]
    q = tf.transpose(self._project(self._query_dense, query, 1), heads_first)
    k = tf.transpose(self._project(self._key_dense, key, 1), heads_first)
    v = tf.transpose(self._project(self._value_dense, value, 1), heads_first)
    q = self._scaled_query_activation(
        tf.multiply(q, 1.0 / math.sqrt(float(self._key_dim))))
    scores = self._score_activation(tf.matmul(q, k, transpose_b=True))
    probabilities = self._probability_activation(
        self._masked_softmax(scores, attention_mask))
    context = self._context_activation(tf.matmul(
        self._dropout_layer(probabilities, training=training), v))
    output = self._project(self._output_dense,
                           tf.transpose(context, heads_first), 2)
    if return_attention_scores:
      return output, probabilities
    return output


def build_projections(layer) -> None:
  """Builds a MultiHeadAttention's projections from its stored shapes.

  A MultiHeadAttention loaded from its config has its EinsumDense
  projections but builds them only when first called; the wrapper needs
  their kernels before that.
  """
  if not isinstance(layer, tf_keras.layers.MultiHeadAttention):
    return
  query = getattr(layer, "_query_shape", None)
  if query is None or layer._query_dense.built:  # pylint: disable=protected-access
    return
  value = layer._value_shape  # pylint: disable=protected-access
  key = layer._key_shape or value  # pylint: disable=protected-access
  layer._query_dense.build(query)  # pylint: disable=protected-access
  layer._key_dense.build(key)  # pylint: disable=protected-access
  layer._value_dense.build(value)  # pylint: disable=protected-access
  heads = query[:-1].concatenate(  # [B, T, heads, value_dim]
      [layer._num_heads, layer._value_dim])  # pylint: disable=protected-access
  layer._output_dense.build(heads)  # pylint: disable=protected-access


def swappable(layer: tf_keras.layers.Layer) -> bool:
  """Whether `layer` is exactly a `MultiHeadAttention` (a user's subclass may
  compute otherwise) built on rank-3 inputs, with the default attention
  axis, a 1-D `output_shape` and no activity regularizer: the cases
  `QuantizableMultiHeadAttention` computes on its integer path. Others keep
  Keras's layer (hybrid in the file, as `export_problems` says)."""
  if type(layer) is not tf_keras.layers.MultiHeadAttention:  # pylint: disable=unidiomatic-typecheck
    return False
  shapes = [getattr(layer, f"_{n}_shape", None)
            for n in ("query", "key", "value")]
  return (shapes[0] is not None and
          all(s is None or len(s) == 3 for s in shapes) and
          _flat_settings(layer) and
          layer._activity_regularizer is None)  # pylint: disable=protected-access


def _flat_settings(layer: tf_keras.layers.MultiHeadAttention) -> bool:
  """Whether built `layer` attends over the sequence axis only and has a
  1-D `output_shape`."""
  return (tuple(layer._attention_axes) == (1,) and  # pylint: disable=protected-access
          len(tf.TensorShape(layer._output_shape or [None])) == 1)  # pylint: disable=protected-access


def as_quantizable(layer: tf_keras.layers.MultiHeadAttention
                   ) -> QuantizableMultiHeadAttention:
  """An unbuilt `QuantizableMultiHeadAttention` with `layer`'s config: call
  it once (its variables are then named as `layer`'s), then give it
  `layer`'s weights."""
  config = layer.get_config()
  for shape in ("query_shape", "key_shape", "value_shape"):
    del config[shape]  # built by its first call, not from the config
  return QuantizableMultiHeadAttention(**config)
