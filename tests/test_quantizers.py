import numpy as np
import pytest
import tensorflow as tf

from kqreg import quantizers


@pytest.mark.parametrize("bits", [None, 2, 5, 8])
def test_check_bits_accepts_none_and_range(bits):
  assert quantizers.check_bits(bits, quantizers.WEIGHT_BITS, "weight_bits") == bits


@pytest.mark.parametrize("bits", [1, 9, 4.0, "4", True])
def test_check_bits_names_value_and_range(bits):
  with pytest.raises(ValueError, match=r"`weight_bits` must be an integer between 2 and 8.*Received: weight_bits="):
    quantizers.check_bits(bits, quantizers.WEIGHT_BITS, "weight_bits")


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
  assert len(np.unique(q)) <= quantizers.num_levels(bits, narrow)
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
  import tf_keras
  built = quantizer.build(shape, "q", tf_keras.layers.Layer())
  return built, {k: tf.Variable(v) for k, v in built.items()}


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
  # Straight through: only a weight a rounding error outside the nudged
  # range may differ (tfmot's gradient zeroes it).
  assert np.mean(fast_grad != ref_grad) <= 1 / fast_grad.shape[-1]
  # Inference reads the stored range through tfmot's op: the same values.
  np.testing.assert_array_equal(quantizer(kernel, False, ours).numpy(), fast)


def test_weight_training_path_keeps_an_all_zero_channel_at_zero():
  quantizer = quantizers.WeightQuantizer(4)
  ours, _ = _range_vars(quantizer, (3, 3, 2, 3))
  kernel = np.random.default_rng(0).standard_normal((3, 3, 2, 3)).astype(np.float32)
  kernel[..., 1] = 0.0
  out = quantizer(tf.constant(kernel), True, ours).numpy()
  assert np.isfinite(out).all() and (out[..., 1] == 0).all()


@pytest.mark.parametrize("after_relu", [True, False])
def test_activation_training_path_equals_tfmot_moving_avg_quantize(after_relu):
  quantizer = quantizers.ActivationQuantizer(8)
  ours, stock = _range_vars(quantizer, (None, 16))

  @tf.function
  def step(x, fast):
    x = tf.nn.relu(x) if after_relu else x
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = (quantizer(x, True, ours) if fast else
             _tfmot_quantizers.MovingAverageQuantizer.__call__(quantizer, x, True, stock))
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
