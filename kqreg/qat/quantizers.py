"""The uniform b-bit grid, written once: bit checks, levels, step and quantizers.

A b-bit uniform quantizer maps a range [min, max] onto `2^b` levels (`2^b - 1`
with `narrow_range`), spaced by the step

    Δ = (max - min) / (2^b - 1 - narrow_range)

after TensorFlow's `fake_quant` nudges the range so that 0.0 is a level. The
weight quantizer keeps the range of the last training batch (tfmot's
`LastValueQuantizer`, which honours `num_bits`; tfmot's `FixedQuantizer` does
not), the activation quantizer a moving average of it. Both forward-quantize
and pass gradients straight through (STE) inside the clipping range.

`WeightNoiseQuantizer` is the noise-only control: it sets the same range and
step Δ as `WeightQuantizer` but adds fresh uniform noise U(−Δ/2, Δ/2) to the
weights in training instead of rounding them, and nothing at inference.

Every other kqreg module asks this one for steps and levels, so the noise
statistics use exactly the grid the forward pass uses.

# References
- Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple
import weakref

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from kqreg import _tfmot
from kqreg import kernels
from kqreg.qat.grid import ACTIVATION_BITS, WEIGHT_BITS, check_bits, num_levels

__all__ = [
    "CHANNEL_LAYOUTS",
    "nudged_grid",
    "WeightQuantizer",
    "WeightNoiseQuantizer",
    "ActivationQuantizer",
    "PrefixedActivationQuantizer",
    "RangeSource",
    "InputRangeQuantizer",
    "BOUNDED_ACTIVATIONS",
    "FixedRangeQuantizer",
]


_tfmot_quantizers = tfmot.quantization.keras.quantizers


def nudged_grid(min_var: tf.Tensor, max_var: tf.Tensor, bits: int,
                narrow_range: bool) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """The grid `tf.quantization.fake_quant_*` really uses for a range.

  Mirrors TensorFlow's `Nudge` (fake_quant_ops_functor.h): the step comes from
  the stored range, then the range is shifted so that zero falls on a level.

  Args:
    min_var: stored range minimum (scalar or per channel).
    max_var: stored range maximum, same shape.
    bits: bit-width.
    narrow_range: whether the lowest level is dropped.

  Returns:
    `(nudged_min, nudged_max, step)`, each shaped like `min_var`.
  """
  min_var = tf.convert_to_tensor(min_var, tf.float32)
  max_var = tf.convert_to_tensor(max_var, tf.float32)
  quant_min = 1.0 if narrow_range else 0.0
  quant_max = float(2**bits - 1)
  step = (max_var - min_var) / (quant_max - quant_min)
  zero_point_from_min = quant_min - min_var / step
  # TensorFlow rounds half away from zero (std::round) here.
  nudged_zero_point = tf.clip_by_value(
      tf.sign(zero_point_from_min) *
      tf.floor(tf.abs(zero_point_from_min) + 0.5), quant_min, quant_max)
  nudged_min = (quant_min - nudged_zero_point) * step
  nudged_max = (quant_max - nudged_zero_point) * step
  return nudged_min, nudged_max, step


def _fake_quant_symmetric(inputs: tf.Tensor, peak: tf.Tensor, bits: int,
                          per_channel: bool) -> tf.Tensor:
  """`fake_quant_with_min_max_vars[_per_channel]` on [-peak, peak], narrow.

  On a symmetric narrow range TensorFlow's nudged zero point is the middle
  level, so the grid is ±L·Δ with L = 2^(b-1) - 1 and Δ = 2·peak / 2L. The
  rest is TensorFlow's own arithmetic (fake_quant_ops_functor.h: the
  per-channel kernel multiplies by a separately computed 1/Δ, the per-tensor
  kernel divides by Δ), so the values agree to the bit, forward only.
  `peak` must be > 0.
  """
  half_levels = float(2**(bits - 1) - 1)
  span = peak + peak
  step = span / (2.0 * half_levels)
  edge = half_levels * step
  shifted = tf.clip_by_value(inputs, -edge, edge) + edge
  levels = shifted * ((2.0 * half_levels) / span) if per_channel else (
      shifted / step)
  return tf.floor(levels - half_levels + 0.5) * step


class _BitsEquality:
  """`__eq__` over `get_config()` so configs and round trips compare."""

  def __eq__(self, other):
    return type(self) is type(other) and self.get_config() == other.get_config()

  def __ne__(self, other):
    return not self == other

  __hash__ = None


CHANNEL_LAYOUTS = ("last", "depthwise", "transpose")
"""Where a kernel keeps its output channels, for per-channel ranges:
`last`: Dense (in, out), Conv1D/2D/3D (..., in, out), LSTM/GRU kernels;
`depthwise`: DepthwiseConv1D/2D (..., in, multiplier), channels are
in·multiplier;
`transpose`: Conv1D/2D/3DTranspose (..., out, in).
Spatial axes may be any number (1-D, 2-D and 3-D kernels alike)."""


def _swap_last_two(rank: int):
  return list(range(rank - 2)) + [rank - 1, rank - 2]


@tf_keras.utils.register_keras_serializable(package="kqreg")
class WeightQuantizer(_BitsEquality, _tfmot_quantizers.LastValueQuantizer):
  """b-bit uniform weight quantizer on the range of the current weights.

  Core computation:
    1. In training, set the range to min/max of the weights (per output
       channel when `per_axis`), made symmetric when `symmetric`.
    2. Nudge the range so 0.0 is a level; Δ = range / (levels - 1).
    3. w_q = clamp(round((w - min) / Δ), 0, levels - 1) · Δ + min; the gradient
       passes straight through inside the range.

  Per-channel ranges follow the output channels TFLite quantizes per channel,
  so a BatchNormalization folded into the kernel later scales whole channels
  and keeps every channel on its b-bit grid (tfmot issue 1131).

  Args:
    num_bits: int in 2..8.
    per_axis: one range per output channel.
    symmetric: range symmetric about 0, as TFLite's int weights expect.
    narrow_range: drop the lowest level, so the grid is symmetric (-127..127
      at 8 bits) as TFLite's int weights require.
    layout: one of `CHANNEL_LAYOUTS`, where the kernel's channels are.

  Example:
  >>> import kqreg
  >>> quantizer = kqreg.qat.WeightQuantizer(4, per_axis=False)
  >>> quantizer.get_config()  # doctest: +ELLIPSIS
  {'num_bits': 4, 'per_axis': False, 'symmetric': True, 'narrow_range': True...}
  """

  def __init__(self, num_bits: int, per_axis: bool = True,
               symmetric: bool = True, narrow_range: bool = True,
               layout: str = "last"):
    if layout not in CHANNEL_LAYOUTS:
      raise ValueError(f"`layout` must be one of {CHANNEL_LAYOUTS}. "
                       f"Received: layout={layout!r}")
    super().__init__(
        num_bits=check_bits(num_bits, WEIGHT_BITS, "num_bits"),
        per_axis=bool(per_axis),
        symmetric=bool(symmetric),
        narrow_range=bool(narrow_range))
    self.layout = layout

  @property
  def levels(self) -> int:
    return num_levels(self.num_bits, self.narrow_range)

  def to_channels_last(self, kernel: tf.Tensor) -> tf.Tensor:
    """Reorders `kernel` so its output channels are on the last axis."""
    if self.layout == "depthwise":
      return tf.reshape(kernel, self.channels_last_shape(kernel.shape))
    if self.layout == "transpose":
      return tf.transpose(kernel, _swap_last_two(kernel.shape.rank))
    return kernel

  def from_channels_last(self, kernel: tf.Tensor, shape) -> tf.Tensor:
    """Inverse of `to_channels_last` for a kernel of original `shape`."""
    if self.layout == "depthwise":
      return tf.reshape(kernel, shape)
    if self.layout == "transpose":
      return tf.transpose(kernel, _swap_last_two(kernel.shape.rank))
    return kernel

  def channels_last_shape(self, shape) -> tf.TensorShape:
    shape = tf.TensorShape(shape)
    dims = shape.as_list()
    if self.layout == "depthwise":
      return tf.TensorShape(dims[:-2] + [1, dims[-2] * dims[-1]])
    if self.layout == "transpose":
      return tf.TensorShape(dims[:-2] + [dims[-1], dims[-2]])
    return shape

  def build(self, tensor_shape, name, layer):
    return super().build(self.channels_last_shape(tensor_shape), name, layer)

  def __call__(self, inputs, training, weights, **kwargs):
    kernel = self.to_channels_last(inputs)
    if training and self.symmetric and self.narrow_range:
      outputs = self._quantize_symmetric(kernel, weights)
    else:
      outputs = super().__call__(kernel, training, weights, **kwargs)
    return self.from_channels_last(outputs, inputs.shape)

  def _quantize_symmetric(self, kernel: tf.Tensor, weights) -> tf.Tensor:
    """tfmot's `LastValueQuantize` for a symmetric narrow grid, cheaper.

    The same range and the same nudged grid, so the same values to the bit,
    from one `max|w|` reduction instead of a min and a max, with the rounding
    written out: TensorFlow's per-channel `fake_quant` and its gradient cost
    more than the rest of a small layer's update (0.55 against 0.22 ms for a
    3x3x64x64 kernel on 2 cores). The gradient passes straight through; on a
    range of ±max|w| TensorFlow's zeroes only a weight a rounding error
    outside the nudged range, which lands on the end level either way.
    """
    axis = list(range(kernel.shape.rank - 1)) if self.per_axis else None
    peak = tf.reduce_max(tf.abs(kernel), axis=axis)
    weights["min_var"].assign(-peak)
    weights["max_var"].assign(peak)
    # An all-zero channel has no range; on a tiny one its zeros stay zeros,
    # as TensorFlow's kernel returns them.
    peak = tf.maximum(peak, 1e-30)
    # Straight through: the forward value is the grid's, the gradient w's.
    return kernel + tf.stop_gradient(_fake_quant_symmetric(
        kernel, peak, self.num_bits, self.per_axis) - kernel)

  def get_config(self):
    return {**super().get_config(), "layout": self.layout}


def _last_value_range(kernel: tf.Tensor, bits: int, per_axis: bool,
                      symmetric: bool, narrow_range: bool
                      ) -> Tuple[tf.Tensor, tf.Tensor]:
  """The range tfmot's `LastValueQuantize` stores for a channels-last kernel."""
  axis = list(range(kernel.shape.rank - 1)) if per_axis else None
  batch_min = tf.reduce_min(kernel, axis=axis)
  batch_max = tf.reduce_max(kernel, axis=axis)
  if not symmetric:
    return tf.minimum(batch_min, 0.0), tf.maximum(batch_max, 0.0)
  # tfmot's ratio: two's complement has one more negative level unless narrow.
  ratio = -1.0 if narrow_range else -((1 << bits) - 2) / (1 << bits)
  return (tf.minimum(batch_min, batch_max / ratio),
          tf.maximum(batch_max, batch_min * ratio))


def _noise_seed_initializer(shape, dtype=tf.int64, **kwargs):
  """`[key, 0]`: a key from the global RNG, so `set_random_seed` fixes it."""
  del shape, kwargs  # Always (2,).
  key = tf.random.uniform((), maxval=2**62, dtype=tf.int64)
  return tf.cast(tf.stack([key, tf.zeros((), tf.int64)]), dtype)


@tf_keras.utils.register_keras_serializable(package="kqreg")
class WeightNoiseQuantizer(WeightQuantizer):
  """The noise twin of `WeightQuantizer`: w + U(−Δ/2, Δ/2), never rounded.

  The control arm of the QReg experiment: the additive noise model of b-bit
  weight quantization without the quantization.

  Core computation, in training:
    1. Set the range (`min_var`, `max_var`) exactly as `WeightQuantizer`
       does on the same weights, and take its step Δ (per output channel when
       `per_axis`): Δ = max|w| / (2^(b-1) - 1) on the default symmetric
       narrow grid.
    2. Draw u ~ U(−1/2, 1/2) per weight from a stateless RNG seeded with
       `noise_seed` = [key, step]; `step` is incremented by every training
       call, so each call draws fresh noise, also inside a traced
       `train_step`. The key comes from the global RNG when the variable is
       built (fixed by `tf_keras.utils.set_random_seed`), and both are saved
       with the model, so a resumed run continues the same sequence.
    3. Return w + u·Δ, with u·Δ a constant for the gradient (identity).

  At inference (`training=False`) it returns w: nothing is rounded, so a
  model trained with it runs in float.

  Args: those of `WeightQuantizer`.

  Example:
  >>> import kqreg
  >>> quantizer = kqreg.qat.WeightNoiseQuantizer(4)
  >>> quantizer.num_bits, isinstance(quantizer, kqreg.qat.WeightQuantizer)
  (4, True)
  """

  def build(self, tensor_shape, name, layer):
    variables = super().build(tensor_shape, name, layer)
    # One writer per step under a distribution strategy: every replica adds
    # the same noise to the same weights.
    variables["noise_seed"] = layer.add_weight(
        name + "_noise_seed", shape=(2,), dtype=tf.int64,
        initializer=_noise_seed_initializer, trainable=False,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    return variables

  def __call__(self, inputs, training, weights, **kwargs):
    if not training:
      return tf.identity(inputs)
    kernel = self.to_channels_last(inputs)
    low, high = _last_value_range(kernel, self.num_bits, self.per_axis,
                                  self.symmetric, self.narrow_range)
    weights["min_var"].assign(low)
    weights["max_var"].assign(high)
    seed = weights["noise_seed"].assign_add(
        tf.constant([0, 1], tf.int64), read_value=True)
    noise = self._noise(kernel.shape, low, high, seed)
    return self.from_channels_last(kernel + tf.stop_gradient(noise),
                                   inputs.shape)

  def last_noise(self, inputs: tf.Tensor, weights) -> tf.Tensor:
    """δ of the last training call, shaped like `inputs`.

    Recomputed from the stored range and seed: the same draw that call added
    (equal up to float32 rounding of Δ), while the weights may have moved
    since by one optimizer update.
    """
    kernel_shape = self.channels_last_shape(inputs.shape)
    noise = self._noise(kernel_shape, weights["min_var"], weights["max_var"],
                        tf.convert_to_tensor(weights["noise_seed"]))
    return self.from_channels_last(noise, inputs.shape)

  def _noise(self, shape, low, high, seed) -> tf.Tensor:
    step = nudged_grid(low, high, self.num_bits, self.narrow_range)[2]
    unit = tf.random.stateless_uniform(shape, seed, minval=-0.5, maxval=0.5)
    return unit * step


@tf_keras.utils.register_keras_serializable(package="kqreg")
class ActivationQuantizer(_BitsEquality,
                          _tfmot_quantizers.MovingAverageQuantizer):
  """b-bit uniform activation quantizer on an EMA of the observed range.

  The moving average decays by `ACTIVATION_RANGE_DECAY` (0.9) per training
  step, not tfmot's 0.999: from scratch, activations grow faster than a
  700-step half-life follows, and the trailing range clips them.

  Args:
    num_bits: int in 2..16.
    per_axis: one range per channel (rarely wanted for activations).
    symmetric: range symmetric about 0.
    narrow_range: drop the lowest level.

  In a traced training step, a quantizer whose input comes straight out of a
  ReLU or ReLU6 runs both as one kqreg kernel (`kernels.relu_fake_quant`):
  the same values and gradients, one pass each way instead of two.

  Attributes:
    frozen: when True, training steps quantize on the range reached so far
      and stop updating it (`kqreg.qat.freeze_activation_ranges` sets it). Read
      when a step is traced, so a compiled model needs its train function
      remade (`model.make_train_function(force=True)`). Not part of the
      config: a saved model loads unfrozen.

  Example:
  >>> import kqreg
  >>> quantizer = kqreg.qat.ActivationQuantizer(8)
  >>> quantizer.num_bits, quantizer.frozen
  (8, False)
  """

  frozen = False
  # Set by `PrefixedActivationQuantizer` for hooks whose values lie far from
  # the initial ±6 (a LayerNorm's variance): their first training batch sets
  # the range.
  from_first_batch = False

  def __init__(self, num_bits: int, per_axis: bool = False,
               symmetric: bool = False, narrow_range: bool = False):
    super().__init__(
        num_bits=check_bits(num_bits, ACTIVATION_BITS, "num_bits"),
        per_axis=bool(per_axis),
        symmetric=bool(symmetric),
        narrow_range=bool(narrow_range))

  @property
  def levels(self) -> int:
    return num_levels(self.num_bits, self.narrow_range)

  def __call__(self, inputs, training, weights, **kwargs):
    if not training or self.per_axis or self.symmetric:
      # tfmot's MovingAverageQuantizer.__call__ fixes its decay at 0.999.
      return _tfmot.MovingAvgQuantize(
          inputs, weights["min_var"], weights["max_var"],
          ema_decay=ACTIVATION_RANGE_DECAY,
          is_training=training and not self.frozen, num_bits=self.num_bits,
          per_channel=self.per_axis, symmetric=self.symmetric,
          narrow_range=self.narrow_range)
    relu6 = kernels.fused_activation(inputs)
    if self.frozen:  # tfmot's inference computation, with kqreg's gradient.
      return self._quantize(inputs, relu6, weights["min_var"],
                            weights["max_var"])
    # tfmot's `MovingAvgQuantize` for one asymmetric range, to the bit, minus
    # the batch minimum after a ReLU: min(reduce_min(relu(x)), 0) == 0, and
    # the reduction is a full pass over the activation. A tensor, not a
    # Python 0.0: under a tf.distribute strategy the update reads its shape.
    if relu6 is None:
      batch_min = tf.minimum(tf.reduce_min(inputs), 0.0)
      batch_max = tf.maximum(tf.reduce_max(inputs), 0.0)
    else:
      # max(relu(x)) from x itself, so that nothing reads the ReLU's output
      # and TensorFlow prunes it when the fused kernel replaces it.
      batch_min = tf.zeros([], inputs.dtype)
      batch_max = tf.maximum(tf.reduce_max(inputs.op.inputs[0]), 0.0)
      if relu6:
        batch_max = tf.minimum(batch_max, 6.0)
    decay = ACTIVATION_RANGE_DECAY
    if self.from_first_batch:
      # A range still at tfmot's initial ±6 has seen no batch: it jumps to
      # this one's (decay 0), then moves as any other.
      fresh = tf.logical_and(
          tf.equal(weights["min_var"], INITIAL_RANGE[0]),
          tf.equal(weights["max_var"], INITIAL_RANGE[1]))
      decay = tf.where(fresh, 0.0, decay)
    assign = tf.__internal__.train.assign_moving_average
    min_var = assign(weights["min_var"], batch_min, decay, zero_debias=False)
    max_var = assign(weights["max_var"], batch_max, decay, zero_debias=False)
    return self._quantize(inputs, relu6, min_var, max_var)

  def _quantize(self, inputs, relu6, min_value, max_value):
    """Fake-quantizes `inputs`, fused with the ReLU that made them if any."""
    if relu6 is not None:
      # One pass each way instead of two: the ReLU and the quantizer in one
      # kernel, the same values to the bit.
      fused = kernels.relu_fake_quant(
          inputs.op.inputs[0], min_value, max_value, num_bits=self.num_bits,
          narrow_range=self.narrow_range, relu6=relu6)
      if fused is not None:
        return fused
    return kernels.fake_quant_with_min_max_vars(
        inputs, min_value, max_value, num_bits=self.num_bits,
        narrow_range=self.narrow_range)


class PrefixedActivationQuantizer(ActivationQuantizer):
  """An `ActivationQuantizer` whose variables are named `<prefix>_<name>`.

  For the activations of a composite layer's sub-layers (a
  MultiHeadAttention's projections): tfmot names every activation's range
  `post_activation_min`/`_max`, which would repeat within one wrapper. Made
  by `BitQuantizeConfig` from the attribute path, never serialized itself.
  With `from_first_batch` its range starts at the first training batch's
  instead of moving there from ±6.
  """

  def __init__(self, num_bits: int, prefix: str,
               from_first_batch: bool = False):
    super().__init__(num_bits)
    self.prefix = prefix
    self.from_first_batch = bool(from_first_batch)

  def build(self, tensor_shape, name, layer):
    return super().build(tensor_shape, f"{self.prefix}_{name}", layer)


@dataclasses.dataclass(frozen=True, eq=False)
class RangeSource:
  """The quantizer and range variables that put a tensor on its grid.

  A plain object, not a trackable one: a wrapper holding it must not count
  the variables, which belong to the layer that made the tensor, as its own.
  """
  quantizer: object
  variables: Dict[str, tf.Variable]

  def quantize(self, inputs: tf.Tensor) -> tf.Tensor:
    """`inputs` on this grid, the range left as it is."""
    return self.quantizer(inputs, False, weights=self.variables)


@tf_keras.utils.register_keras_serializable(package="kqreg")
class InputRangeQuantizer(ActivationQuantizer):
  """Quantizes a layer's output on its input's grid, as TFLite's same-scale
  ops do.

  TFLite's int8 AVERAGE_POOL_2D keeps its input's scale and zero point: it
  rounds the average onto the input's grid. A range of the pool's own is a
  second grid the file cannot hold: after it the converter adds a
  requantize, and before a Concatenate it refuses the pool ("same scale
  constraint"). This quantizer quantizes on the range of the layer that made
  the input (the wrapper's `RangeSource`, found when kqreg's wrapper is
  called on the graph) and never updates it.

  Its own range variables stay, so that a saved model loads before its graph
  is connected; in training they mirror the source's range. Without a
  source (the input is not quantized) it is an `ActivationQuantizer`.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([
  ...     tf_keras.Input((4, 4, 1)), tf_keras.layers.Conv2D(2, 1, name="conv"),
  ...     tf_keras.layers.AveragePooling2D()])
  >>> pool = kqreg.quantize(model, "w4a8").layers[-1]
  >>> quantizer = pool._output_quantizers[0]
  >>> type(quantizer).__name__, quantizer.source().variables["min_var"].name
  ('InputRangeQuantizer', 'quant_conv/post_activation_min:0')
  """

  def build(self, tensor_shape, name, layer):
    # A weak reference: the wrapper holds this quantizer.
    self._layer = weakref.ref(layer)
    return super().build(tensor_shape, name, layer)

  def source(self) -> Optional[RangeSource]:
    """The range this quantizer follows, None if it keeps its own."""
    layer = self._layer() if hasattr(self, "_layer") else None
    return getattr(layer, "input_range", None)

  def __call__(self, inputs, training, weights, **kwargs):
    source = self.source()
    if source is None:
      return super().__call__(inputs, training, weights, **kwargs)
    if training:
      assign = tf.__internal__.train.assign_moving_average
      for key in ("min_var", "max_var"):
        assign(weights[key], source.variables[key], 0.0, zero_debias=False)
    return source.quantize(inputs)


BOUNDED_ACTIVATIONS = {"sigmoid": (0.0, 1.0), "softmax": (0.0, 1.0),
                       "tanh": (-1.0, 1.0)}
"""Activations with a fixed output interval, and that interval. TFLite's int8
kernels fix their output grid to it (LOGISTIC and SOFTMAX: scale 1/256, zero
point -128; TANH: scale 1/128, zero point 0)."""


@tf_keras.utils.register_keras_serializable(package="kqreg")
class FixedRangeQuantizer(_BitsEquality, _tfmot_quantizers.Quantizer):
  """b-bit quantizer on a fixed interval [low, high): 2^b levels, step (high − low)/2^b.

  For the outputs of bounded activations (`BOUNDED_ACTIVATIONS`). At 8 bits
  its grid is exactly the one TFLite's int8 kernels give these ops, so the
  exported file holds the values the model trained with. A moving-average
  range starts at ±6 and, at tfmot's decay of 0.999, still spanned several
  units after a few hundred steps: a sigmoid's small probabilities (a
  detector's class scores) then rounded to 0. At any decay, a [0, 1) output
  is best served by the grid TFLite fixes for it.

  Args:
    num_bits: int in 2..16.
    low, high: the activation's output interval; `high` itself is not a level.

  Example:
  >>> import kqreg
  >>> quantizer = kqreg.qat.FixedRangeQuantizer(8, 0.0, 1.0)
  >>> quantizer.get_config()
  {'num_bits': 8, 'low': 0.0, 'high': 1.0}
  """

  def __init__(self, num_bits: int, low: float, high: float):
    self.num_bits = check_bits(num_bits, ACTIVATION_BITS, "num_bits")
    self.low, self.high = float(low), float(high)
    if not self.high > self.low:
      raise ValueError(f"FixedRangeQuantizer needs low < high. Received: "
                       f"low={low!r}, high={high!r}")

  @classmethod
  def for_activation(cls, num_bits: int, activation: str
                     ) -> "FixedRangeQuantizer":
    """The quantizer of `activation`'s output (a `BOUNDED_ACTIVATIONS` key)."""
    return cls(num_bits, *BOUNDED_ACTIVATIONS[activation])

  @property
  def step(self) -> float:
    return (self.high - self.low) / 2**self.num_bits

  @property
  def levels(self) -> int:
    return num_levels(self.num_bits)

  def build(self, tensor_shape, name, layer):
    return {}

  def __call__(self, inputs, training, weights, **kwargs):
    # `low` is 0 or a whole number of steps below it, so TensorFlow's nudge
    # leaves this grid unchanged.
    return tf.quantization.fake_quant_with_min_max_args(
        inputs, min=self.low, max=self.high - self.step,
        num_bits=self.num_bits, narrow_range=False)

  def get_config(self):
    return {"num_bits": self.num_bits, "low": self.low, "high": self.high}


# The activation range's moving-average decay. tfmot's 0.999 (half-life ~700
# steps) suits fine-tuning a trained model, whose activations hold still; from
# scratch they grow by orders of magnitude in the first hundreds of steps, and
# a range that trails them clips what the network learns. ResNet-50 on
# kqreg_mnist (batch 32, Adam 1e-3, 150 steps): w8a8 at 0.999 reached 0.30
# validation accuracy, w4 (float activations) 0.84, fp 0.92; w8a8 at 0.9
# (half-life ~7 steps) 0.90. tests/test_zoo_learns.py checks short runs.
ACTIVATION_RANGE_DECAY = 0.9
INITIAL_RANGE = (-6.0, 6.0)
"""The range tfmot's moving-average quantizers start from."""
