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
