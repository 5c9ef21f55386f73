import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from kqreg import kernels
from kqreg.qat import grid
from kqreg import _tfmot
from kqreg.qat import quantizers


@pytest.mark.parametrize("bits", [None, 2, 5, 8])
def test_check_bits_accepts_none_and_range(bits):
  assert grid.check_bits(bits, grid.WEIGHT_BITS, "weight_bits") == bits


@pytest.mark.parametrize("bits", [1, 9, 4.0, "4", True])
def test_check_bits_names_value_and_range(bits):
  with pytest.raises(ValueError, match=r"`weight_bits` must be an integer between 2 and 8.*Received: weight_bits="):
    grid.check_bits(bits, grid.WEIGHT_BITS, "weight_bits")


def test_activation_quantizer_allows_16_bits_weight_quantizer_does_not():
  assert quantizers.ActivationQuantizer(16).num_bits == 16
  with pytest.raises(ValueError, match="between 2 and 8"):
    quantizers.WeightQuantizer(16)


@pytest.mark.parametrize("narrow", [False, True])
@pytest.mark.parametrize("bits", range(2, 9))
def test_nudged_grid_matches_fake_quant(bits, narrow):
  rng = np.random.default_rng(bits)
  lo, hi = -rng.random() * 2, rng.random() * 3
  x = tf.constant(rng.uniform(lo - 1, hi + 1, 5000), tf.float32)
  q = tf.quantization.fake_quant_with_min_max_vars(
      x, lo, hi, num_bits=bits, narrow_range=narrow).numpy()
  nmin, nmax, step = (t.numpy() for t in quantizers.nudged_grid(lo, hi, bits, narrow))
  assert len(np.unique(q)) <= grid.num_levels(bits, narrow)
  assert q.min() == pytest.approx(nmin, abs=1e-6)
  assert q.max() == pytest.approx(nmax, abs=1e-6)
  np.testing.assert_allclose(np.diff(np.unique(q)), step, rtol=1e-4)


def test_weight_quantizer_config_round_trip_and_equality():
  q = quantizers.WeightQuantizer(3, per_axis=False, layout="transpose")
  again = quantizers.WeightQuantizer.from_config(q.get_config())
  assert again == q
  assert again != quantizers.WeightQuantizer(4, per_axis=False, layout="transpose")


def test_weight_quantizer_rejects_unknown_layout():
  with pytest.raises(ValueError, match="`layout` must be one of"):
    quantizers.WeightQuantizer(4, layout="first")


# kqreg's training paths are cheaper rewrites of tfmot's LastValueQuantize and
# MovingAvgQuantize; they must give the same values, ranges and gradients.
_tfmot_quantizers = quantizers._tfmot_quantizers


def _range_vars(quantizer, shape):
  built = quantizer.build(shape, "q", tf_keras.layers.Layer())
  return built, {k: tf.Variable(v) for k, v in built.items()}


def _peak_per_weight(quantizer, kernel):
  """max|w| of each weight's range (its channel, or the tensor), per weight."""
  flat = np.abs(quantizer.to_channels_last(tf.constant(kernel)).numpy())
  axes = tuple(range(flat.ndim - 1)) if quantizer.per_axis else None
  peak = np.broadcast_to(flat.max(axis=axes, keepdims=True), flat.shape)
  return quantizer.from_channels_last(tf.constant(peak), kernel.shape).numpy()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_axis", [True, False])
@pytest.mark.parametrize("layout, shape", [("last", (3, 3, 8, 16)),
                                           ("depthwise", (3, 3, 8, 2)),
                                           ("transpose", (3, 3, 4, 8)),
                                           ("last", (24, 10))])
def test_weight_training_path_equals_tfmot_last_value_quantize(bits, per_axis, layout, shape):
  quantizer = quantizers.WeightQuantizer(bits, per_axis=per_axis, layout=layout)
  ours, stock = _range_vars(quantizer, shape)
  rng = np.random.default_rng(bits)
  kernel = tf.Variable(rng.standard_normal(shape).astype(np.float32))
  upstream = tf.constant(rng.standard_normal(shape).astype(np.float32))

  def stock_call(k):
    out = _tfmot_quantizers.LastValueQuantizer.__call__(
        quantizer, quantizer.to_channels_last(k), True, stock)
    return quantizer.from_channels_last(out, k.shape)

  results = []
  for call in (lambda k: quantizer(k, True, ours), stock_call):
    with tf.GradientTape() as tape:
      out = call(kernel)
      loss = tf.reduce_sum(out * upstream)
    results.append((out.numpy(), tape.gradient(loss, kernel).numpy()))
  (fast, fast_grad), (ref, ref_grad) = results
  np.testing.assert_array_equal(fast, ref)
  np.testing.assert_array_equal(ours["min_var"].numpy(), stock["min_var"].numpy())
  np.testing.assert_array_equal(ours["max_var"].numpy(), stock["max_var"].numpy())
  # Straight through everywhere; TensorFlow's gradient is zero only at a
  # weight a rounding error outside the nudged range ±L·Δ = ±max|w|, which
  # can only be a weight at the end of its range: |w| = max|w| of its channel.
  np.testing.assert_array_equal(fast_grad, upstream.numpy())
  differ = fast_grad != ref_grad
  assert (ref_grad[differ] == 0).all()
  peak = _peak_per_weight(quantizer, kernel.numpy())
  np.testing.assert_array_equal(np.abs(kernel.numpy())[differ], peak[differ])
  # Inference reads the stored range through tfmot's op: the same values.
  np.testing.assert_array_equal(quantizer(kernel, False, ours).numpy(), fast)


def test_weight_training_path_keeps_an_all_zero_channel_at_zero():
  quantizer = quantizers.WeightQuantizer(4)
  ours, _ = _range_vars(quantizer, (3, 3, 2, 3))
  kernel = np.random.default_rng(0).standard_normal((3, 3, 2, 3)).astype(np.float32)
  kernel[..., 1] = 0.0
  out = quantizer(tf.constant(kernel), True, ours).numpy()
  assert np.isfinite(out).all() and (out[..., 1] == 0).all()


def _stock_moving_avg_quantize(quantizer, y, variables):
  """tfmot's MovingAvgQuantize as its MovingAverageQuantizer calls it, at
  kqreg's decay (tfmot's quantizer fixes 0.999)."""
  return _tfmot.MovingAvgQuantize(
      y, variables["min_var"], variables["max_var"],
      ema_decay=quantizers.ACTIVATION_RANGE_DECAY, is_training=True,
      num_bits=quantizer.num_bits, per_channel=quantizer.per_axis,
      symmetric=quantizer.symmetric, narrow_range=quantizer.narrow_range)


@pytest.mark.parametrize("activation", [None, tf.nn.relu, tf.nn.relu6])
def test_activation_training_path_equals_tfmot_moving_avg_quantize(activation):
  """After a ReLU, kqreg's kernel fuses it with the quantizer: still tfmot's values."""
  quantizer = quantizers.ActivationQuantizer(8)
  ours, stock = _range_vars(quantizer, (None, 16))

  @tf.function
  def step(x, fast):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = activation(x) if activation else x
      out = (quantizer(y, True, ours) if fast else
             _stock_moving_avg_quantize(quantizer, y, stock))
      loss = tf.reduce_sum(out * out)
    return out, tape.gradient(loss, x)

  rng = np.random.default_rng(1)
  for scale in (1.0, 4.0, 9.0):  # The last batch exceeds the initial ±6 range.
    x = tf.constant(rng.standard_normal((32, 16)).astype(np.float32) * scale)
    (fast, fast_grad), (ref, ref_grad) = step(x, True), step(x, False)
    np.testing.assert_array_equal(fast.numpy(), ref.numpy())
    np.testing.assert_array_equal(fast_grad.numpy(), ref_grad.numpy())
    for name in ("min_var", "max_var"):
      np.testing.assert_array_equal(ours[name].numpy(), stock[name].numpy())
  ops = step.get_concrete_function(x, True).graph.get_operations()
  fused = [op for op in ops if op.type == "KqregReluFakeQuant"]
  if activation is not None and kernels.kernels_status().startswith("in use"):
    # The ReLU's own output feeds nothing, so TensorFlow prunes the op.
    (relu,) = [op for op in ops if op.type in ("Relu", "Relu6")]
    assert len(fused) == 1 and not relu.outputs[0].consumers()
  else:
    assert not fused


@pytest.mark.parametrize("kwargs", [{}, {"symmetric": True}])  # kqreg, tfmot path
def test_activation_range_follows_growing_activations_within_tens_of_steps(kwargs):
  # From scratch, activations outgrow the initial ±6 range: after 30 training
  # steps of outputs in [-100, 100] the range must cover most of it (tfmot's
  # decay 0.999 would reach 6 + 0.03 * 94 ≈ 8.8; kqreg's 0.9, ≈ 96).
  quantizer = quantizers.ActivationQuantizer(8, **kwargs)
  _, variables = _range_vars(quantizer, (None, 16))
  x = tf.constant(np.linspace(-100, 100, 32 * 16, dtype=np.float32).reshape(32, 16))
  for _ in range(30):
    out = quantizer(x, True, variables)
  assert np.min(variables["max_var"].numpy()) > 90
  assert np.max(variables["min_var"].numpy()) < -90
  assert np.abs(out.numpy() - x.numpy()).max() < 5  # not clipped at ±6


# The noise twin (policy `n<b>`): w + U(−Δ/2, Δ/2) with w<b>'s Δ, never rounded.


def _twin_and_quantizer(bits, per_axis=True, layout="last", shape=(3, 3, 32, 64),
                        **kwargs):
  kernel = tf.Variable(np.random.default_rng(bits).standard_normal(shape).astype(np.float32))
  built = []
  for cls in (quantizers.WeightNoiseQuantizer, quantizers.WeightQuantizer):
    quantizer = cls(bits, per_axis=per_axis, layout=layout, **kwargs)
    built.append((quantizer, _range_vars(quantizer, shape)[0]))
  return kernel, built


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_axis", [True, False])
def test_noise_twin_adds_uniform_noise_of_the_quantizer_step(bits, per_axis):
  kernel, [(twin, twin_vars), _] = _twin_and_quantizer(bits, per_axis)
  delta = (twin(kernel, True, twin_vars) - kernel).numpy().reshape(-1, 64)
  peak = np.abs(kernel.numpy()).reshape(-1, 64).max(axis=0 if per_axis else None)
  step = peak / (2**(bits - 1) - 1)  # symmetric narrow grid: ±L·Δ = ±max|w|
  model_std = np.sqrt(np.mean(np.broadcast_to(step, (64,))**2) / 12)
  assert delta.size == 18432
  assert delta.std() == pytest.approx(model_std, rel=0.10)
  assert abs(delta.mean()) < 0.05 * model_std
  # δ is read back as (w + uΔ) − w in float32: each operation may round by
  # half an ulp of its result, up to |w| + Δ/2.
  rounding = np.spacing(np.float32(np.abs(kernel.numpy()).max() + step.max()))
  assert (np.abs(delta) <= step / 2 + rounding).all()


@pytest.mark.parametrize("symmetric, narrow", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("layout, shape", [("last", (3, 3, 8, 16)), ("depthwise", (3, 3, 8, 2)),
                                           ("transpose", (3, 3, 4, 8)), ("last", (24, 10))])
def test_noise_twin_range_and_step_equal_the_quantizers(layout, shape, symmetric, narrow):
  kernel, [(twin, twin_vars), (quant, quant_vars)] = _twin_and_quantizer(
      4, True, layout, shape, symmetric=symmetric, narrow_range=narrow)
  noisy = twin(kernel, True, twin_vars)
  quant(kernel, True, quant_vars)
  for name in ("min_var", "max_var"):
    np.testing.assert_array_equal(twin_vars[name].numpy(), quant_vars[name].numpy())
  step = quantizers.nudged_grid(quant_vars["min_var"], quant_vars["max_var"], 4, narrow)[2]
  unit = quant.to_channels_last(noisy - kernel).numpy() / step.numpy()
  assert np.abs(unit).max() <= 0.5 + 1e-5 and np.abs(unit).max() > 0.4


def test_noise_twin_is_identity_at_inference_and_in_the_gradient():
  kernel, [(twin, twin_vars), _] = _twin_and_quantizer(4)
  np.testing.assert_array_equal(twin(kernel, False, twin_vars).numpy(), kernel.numpy())
  upstream = tf.constant(np.random.default_rng(1).standard_normal(kernel.shape).astype(np.float32))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(twin(kernel, True, twin_vars) * upstream)
  np.testing.assert_array_equal(tape.gradient(loss, kernel).numpy(), upstream.numpy())


def test_noise_twin_draws_fresh_noise_every_traced_call_and_remembers_the_last():
  kernel, [(twin, twin_vars), _] = _twin_and_quantizer(4)
  call = tf.function(lambda: twin(kernel, True, twin_vars))
  first, second = call().numpy(), call().numpy()
  assert np.mean(first != second) > 0.99
  assert twin_vars["noise_seed"].numpy()[1] == 2  # one step per training call
  # The stored range and seed give back the last draw (up to float rounding):
  # 4e-7, and never less than one float32 step of the value (4.8e-7 at |w| >= 4).
  last = (kernel + twin.last_noise(kernel, twin_vars)).numpy()
  bound = np.maximum(4e-7, np.spacing(np.abs(second)))
  assert np.all(np.abs(last - second) <= bound), np.max(np.abs(last - second) / bound)


def test_noise_twin_seed_follows_the_global_seed():
  keys = []
  for seed in (1, 1, 2):
    tf_keras.utils.set_random_seed(seed)
    _, [(_, twin_vars), _] = _twin_and_quantizer(4)
    keys.append(twin_vars["noise_seed"].numpy()[0])
  assert keys[0] == keys[1] != keys[2]


def test_noise_twin_config_round_trip_and_differs_from_quantizer():
  twin = quantizers.WeightNoiseQuantizer(3, per_axis=False, layout="depthwise")
  again = quantizers.WeightNoiseQuantizer.from_config(twin.get_config())
  assert again == twin and isinstance(again, quantizers.WeightNoiseQuantizer)
  assert twin != quantizers.WeightQuantizer(3, per_axis=False, layout="depthwise")
  assert tf_keras.utils.get_registered_object("kqreg>WeightNoiseQuantizer") is (
      quantizers.WeightNoiseQuantizer)


# Fixed ranges of bounded activations ---------------------------------------

@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_fixed_range_grid_is_tflites_for_the_activation(bits, activation):
  q = quantizers.FixedRangeQuantizer.for_activation(bits, activation)
  low, high = quantizers.BOUNDED_ACTIVATIONS[activation]
  x = tf.constant(np.linspace(low - 0.5, high + 0.5, 4001), tf.float32)
  y = q(x, training=True, weights={}).numpy()
  step = (high - low) / 2**bits
  assert q.step == pytest.approx(step)
  # 2^b levels k·step from `low`; TFLite's int8 LOGISTIC (scale 1/256, zero
  # point -128) and TANH (1/128, 0) at 8 bits.
  levels = (y - low) / step
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert np.round(levels).min() == 0 and np.round(levels).max() == 2**bits - 1
  inside = (x.numpy() >= low) & (x.numpy() <= high - step)
  # TensorFlow rounds halves up.
  expected = low + step * np.floor((x.numpy()[inside] - low) / step + 0.5)
  np.testing.assert_allclose(y[inside], expected, atol=1e-6)
  # Same values in inference; the gradient passes inside the range only.
  np.testing.assert_array_equal(q(x, training=False, weights={}).numpy(), y)
  with tf.GradientTape() as tape:
    tape.watch(x)
    out = q(x, training=True, weights={})
  grad = tape.gradient(out, x).numpy()
  np.testing.assert_array_equal(grad, inside.astype(np.float32))


def test_fixed_range_quantizer_has_no_variables_and_round_trips():
  q = quantizers.FixedRangeQuantizer(8, 0.0, 1.0)
  assert q.build((4,), "q", None) == {}
  again = quantizers.FixedRangeQuantizer.from_config(q.get_config())
  assert again == q and again != quantizers.FixedRangeQuantizer(4, 0.0, 1.0)
  with pytest.raises(ValueError, match="between 2 and 16"):
    quantizers.FixedRangeQuantizer(1, 0.0, 1.0)
  with pytest.raises(ValueError, match="low < high"):
    quantizers.FixedRangeQuantizer(8, 1.0, 1.0)
