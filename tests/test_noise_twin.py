"""The noise-only control arm `n<b>` on whole models: quantize, fit, save, log."""

import csv

import numpy as np
import pytest
import tf_keras

import kqreg
from kqreg.noise import statistics as noise
from kqreg.qat import quantizers
from kqreg.noise import propagation_probe as propagation
from kqreg.qat import introspect


def _dense(n_in=128, n_out=100, seed=0, use_bias=False):
  tf_keras.utils.set_random_seed(seed)
  return tf_keras.Sequential([tf_keras.Input((n_in,)),
                              tf_keras.layers.Dense(n_out, use_bias=use_bias, name="fc")])


def _twins(model):
  return [qw.quantizer for qw in introspect.quantized_weights(model)]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_twin_delta_is_uniform_on_the_quantizers_step(bits):
  x = np.zeros((1, 128), np.float32)
  rows = {}
  for token in (f"w{bits}", f"n{bits}"):
    qat = kqreg.quantize(_dense(), token)
    qat(x, training=True)  # one training step: range, and for the twin a draw
    (rows[token],) = noise.weight_noise(qat)
  twin, quant = rows[f"n{bits}"], rows[f"w{bits}"]
  assert (twin["kind"], quant["kind"]) == ("noise", "round")
  assert twin["step"] == quant["step"]  # same Δ on the same weights
  assert abs(twin["std_ratio"] - 1) < 0.10  # 12,800 draws
  assert abs(twin["delta_mean"]) < 0.05 * twin["model_std"]
  assert twin["delta_max_abs"] <= twin["step"] / 2 * (1 + 1e-6)
  assert twin["clip_fraction"] == 0.0


def test_twin_per_channel_step_equals_the_quantizers(cnn, batch):
  steps = {}
  for token in ("w4", "n4"):
    qat = kqreg.quantize(cnn, token)
    qat(batch[0], training=True)
    steps[token] = [qw.grid()[2].numpy() for qw in introspect.quantized_weights(qat)]
  assert [s.shape for s in steps["n4"]] == [(8,), (8,), ()]  # conv per channel, Dense not
  for twin, quant in zip(steps["n4"], steps["w4"]):
    np.testing.assert_array_equal(twin, quant)


def test_n4_model_trains_and_is_the_float_model_at_inference(cnn, batch):
  x, y = batch
  float_out = cnn(x, training=False).numpy()
  qat = kqreg.quantize(cnn, "n4")
  assert all(isinstance(q, quantizers.WeightNoiseQuantizer) for q in _twins(qat))
  assert len(_twins(qat)) == 3
  np.testing.assert_allclose(qat(x, training=False).numpy(), float_out, rtol=0, atol=1e-5)
  qat.compile(tf_keras.optimizers.Adam(0.01),
              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  loss = qat.fit(x, y, epochs=6, batch_size=32, verbose=0).history["loss"]
  assert loss[-1] < 0.8 * loss[0]
  first, second = qat.predict(x, verbose=0), qat.predict(x, verbose=0)
  np.testing.assert_array_equal(first, second)
  with propagation.float_weights(qat):
    np.testing.assert_array_equal(qat(x, training=False).numpy(),
                                  qat(x, training=False).numpy())
    np.testing.assert_allclose(qat(x, training=False).numpy(), first, rtol=0, atol=1e-5)


class _RecordDelta(tf_keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.deltas = []

  def on_train_batch_end(self, batch, logs=None):
    self.deltas.append(noise.delta_values(self.model)["fc/kernel"])


@pytest.mark.parametrize("token", ["n4", "w4"])
def test_each_compiled_training_step_draws_new_noise(token):
  # Learning rate 0: the weights stay put, so only the noise moves the loss.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((32, 128)).astype(np.float32)
  y = rng.standard_normal((32, 100)).astype(np.float32)
  qat = kqreg.quantize(_dense(), token)
  qat.compile(tf_keras.optimizers.SGD(0.0), "mse")
  record = _RecordDelta()
  loss = qat.fit(x, y, epochs=4, batch_size=32, shuffle=False, verbose=0,
                 callbacks=[record]).history["loss"]
  w = introspect.quantized_weights(qat)[0].weight.numpy()
  if token == "w4":  # Rounding: the same kernel every step.
    assert len(set(loss)) == 1
    return
  assert len(set(loss)) == 4
  for a, b in zip(record.deltas, record.deltas[1:]):
    assert np.mean(a != b) > 0.99
  # Each step's loss is that of w + the δ the noise statistics report for it.
  for step_loss, delta in zip(loss, record.deltas):
    expected = np.mean((x.astype(np.float64) @ (w + delta) - y)**2)
    assert step_loss == pytest.approx(expected, rel=1e-5)


def test_same_seed_same_noise_other_seed_other_noise():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((32, 128)).astype(np.float32)
  y = rng.standard_normal((32, 100)).astype(np.float32)
  base = _dense()
  runs = []
  for seed in (1, 1, 2):  # Same initial weights; the seed picks the noise.
    tf_keras.utils.set_random_seed(seed)
    qat = kqreg.quantize(base, "n4")
    qat.compile(tf_keras.optimizers.SGD(0.01), "mse")
    qat.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    runs.append(introspect.quantized_weights(qat)[0].weight.numpy())
  np.testing.assert_array_equal(runs[0], runs[1])
  assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_twin_model_saves_and_loads_and_continues_the_noise(cnn, batch, tmp_path, suffix):
  x, y = batch
  qat = kqreg.quantize(cnn, "n4a8,last=w8a8")
  qat.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
  path = str(tmp_path / f"model{suffix}")
  qat.save(path)
  with kqreg.quantize_scope():
    loaded = tf_keras.models.load_model(path)
  kinds = [type(q).__name__ for q in _twins(loaded)]
  assert kinds == ["WeightNoiseQuantizer", "WeightNoiseQuantizer", "WeightQuantizer"]
  np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
  seeds = [qw.variables["noise_seed"].numpy() for qw in introspect.quantized_weights(loaded)[:2]]
  assert all(s[1] == 2 for s in seeds)  # two steps taken before saving
  # The next training step draws the same noise in both.
  np.testing.assert_array_equal(loaded(x, training=True).numpy(), qat(x, training=True).numpy())


def test_noise_callback_records_the_twin_like_a_quantizer(cnn, batch, tmp_path):
  x, y = batch
  qat = kqreg.quantize(cnn, "n4")
  qat.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  qat.fit(x, y, epochs=2, verbose=0,
          callbacks=[kqreg.NoiseAnalysisCallback(str(tmp_path), probe_data=x[:8])])
  with open(tmp_path / "noise.csv", newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["layer"] != "output"]
  assert [r["layer"] for r in rows] == ["conv_a", "conv_b", "head"] * 2
  for row in rows:
    assert row["kind"] == "noise" and float(row["clip_fraction"]) == 0.0
    assert 0.75 < float(row["std_ratio"]) < 1.25, row  # 72 to 1,280 draws
    assert float(row["prop_measured"]) > 0
    assert 0.5 < float(row["prop_predicted"]) / float(row["prop_measured_local"]) < 2.0


def test_policy_mixes_twins_and_quantizers_per_layer(cnn):
  qat = kqreg.quantize(cnn, "w4,conv_*=n4a8")
  kinds = {qw.layer_name: qw.kind for qw in introspect.quantized_weights(qat)}
  assert kinds == {"conv_a": "noise", "conv_b": "noise", "head": "round"}


def test_summary_shows_twins_as_n_bits_stored_in_float():
  model = _dense()
  twin, grid = kqreg.quantize(model, "n4"), kqreg.quantize(_dense(), "w4")
  lines = []
  prof = kqreg.summary(twin, print_fn=lines.append)
  (row,) = [l for l in prof.layers if l.quantized_params]
  assert row.weight_noise and row.weight_bits == 4
  assert any(" n4 " in line for line in lines)
  # A twin is float32 at inference: no storage saving, unlike w4.
  assert prof.weight_bytes == prof.float32_bytes
  assert kqreg.qat.profile(grid).weight_bytes < prof.weight_bytes
