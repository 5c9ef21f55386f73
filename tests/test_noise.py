import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import kqreg
from kqreg.noise import statistics as noise
from kqreg.noise import propagation_probe as propagation
from kqreg.qat import introspect


def _np_range(w, bits, symmetric, axis):
  """min/max as tfmot's LastValueQuantize sets them (independent NumPy)."""
  mn = w.min(axis=axis) if axis is not None else np.float32(w.min())
  mx = w.max(axis=axis) if axis is not None else np.float32(w.max())
  if symmetric:  # narrow_range=True in these tests
    return np.minimum(mn, -mx), np.maximum(mx, -mn)
  return np.minimum(mn, 0), np.maximum(mx, 0)


def _np_fake_quant(w, lo, hi, bits, narrow):
  """TensorFlow's FakeQuantWithMinMaxVars, re-derived in float32 NumPy."""
  qmin, qmax = np.float32(1 if narrow else 0), np.float32(2**bits - 1)
  lo, hi = np.float32(lo), np.float32(hi)
  scale = (hi - lo) / (qmax - qmin)
  zp_from_min = qmin - lo / scale
  zp = np.clip(np.sign(zp_from_min) * np.floor(np.abs(zp_from_min) + 0.5), qmin, qmax)
  nmin, nmax = (qmin - zp) * scale, (qmax - zp) * scale
  clamped = np.clip(w, nmin, nmax)
  q = np.floor((clamped - nmin) * (np.float32(1) / scale) + np.float32(0.5)) * scale + nmin
  return q.astype(np.float32), scale, nmin, nmax


def _dense_model(weights):
  model = tf_keras.Sequential([tf_keras.Input((weights.shape[0],)),
                               tf_keras.layers.Dense(weights.shape[1], use_bias=False,
                                                     name="fc")])
  model.get_layer("fc").set_weights([weights])
  return model


def _set_ranges(qat, x):
  qat(x, training=True)  # LastValueQuantize stores the current weights' range


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_noise_matches_numpy_reference(bits, per_channel, symmetric, trained):
  rng = np.random.default_rng(bits)
  w = (rng.standard_normal((64, 32)) * 0.1 + 0.02).astype(np.float32)
  qat = kqreg.quantize(_dense_model(w), f"w{bits}", per_channel=per_channel,
                       symmetric=symmetric)
  x = rng.standard_normal((16, 64)).astype(np.float32)
  if trained:
    qat.compile(tf_keras.optimizers.SGD(0.05), "mse")
    qat.fit(x, rng.standard_normal((16, 32)), epochs=3, verbose=0)
    _set_ranges(qat, x)
  else:
    _set_ranges(qat, x)
  (qw,) = introspect.quantized_weights(qat)
  w_now = qw.weight.numpy()

  narrow = True
  lo, hi = _np_range(w_now, bits, symmetric, 0 if per_channel else None)
  wq, scale, nmin, nmax = _np_fake_quant(w_now, lo, hi, bits, narrow)
  got = qw.quantized().numpy()
  # Same level for every weight; values equal up to float32 rounding.
  np.testing.assert_array_equal(np.round((got - nmin) / scale), np.round((wq - nmin) / scale))
  ulp = float(4 * np.finfo(np.float32).eps * np.abs(w_now).max())
  np.testing.assert_allclose(got, wq, rtol=0, atol=ulp)
  delta = (wq - w_now).astype(np.float32)
  step = np.atleast_1d(scale)
  model_std = np.sqrt(np.mean(step.astype(np.float64)**2) / 12)
  rel_norm = np.linalg.norm(delta) / np.linalg.norm(w_now)
  slack = 1e-3 * scale  # beyond the range by more than rounding
  clip = np.mean((w_now < nmin - slack) | (w_now > nmax + slack))
  # The traced graph (per-epoch callback) and the op-by-op path (result.json).
  for traced in (True, False):
    (row,) = noise.weight_noise(qat, traced=traced)
    assert row["weight_bits"] == bits
    assert row["step"] == pytest.approx(step.mean(), rel=1e-5)
    assert row["step_min"] == pytest.approx(step.min(), rel=1e-5)
    assert row["step_max"] == pytest.approx(step.max(), rel=1e-5)
    assert row["delta_mean"] == pytest.approx(delta.mean(), rel=1e-4, abs=ulp)
    assert row["delta_std"] == pytest.approx(delta.std(), rel=1e-4)
    assert row["delta_max_abs"] == pytest.approx(np.abs(delta).max(), abs=ulp)
    assert row["model_std"] == pytest.approx(model_std, rel=1e-5)
    assert row["std_ratio"] == pytest.approx(delta.std() / model_std, rel=1e-4)
    assert row["rel_norm"] == pytest.approx(rel_norm, rel=1e-4)
    assert row["sqnr_db"] == pytest.approx(-20 * np.log10(rel_norm), rel=1e-4)
    assert row["clip_fraction"] == pytest.approx(clip, abs=1e-7)
    assert set(noise.WEIGHT_NOISE_KEYS) <= set(row)


@pytest.mark.parametrize("bits", range(4, 9))
def test_delta_std_matches_uniform_model_on_gaussian_weights(bits):
  w = np.random.default_rng(0).standard_normal((128, 100)).astype(np.float32)
  qat = kqreg.quantize(_dense_model(w), f"w{bits}", per_channel=False)
  _set_ranges(qat, np.zeros((1, 128), np.float32))
  (row,) = noise.weight_noise(qat)
  assert abs(row["std_ratio"] - 1) < 0.10


@pytest.mark.parametrize("bits", range(4, 9))
def test_one_bit_less_doubles_noise_at_fixed_range(bits):
  w = np.random.default_rng(1).standard_normal((128, 100)).astype(np.float32)
  stds = {}
  for b in (bits, bits - 1):
    qat = kqreg.quantize(_dense_model(w), f"w{b}", per_channel=False,
                         symmetric=False, narrow_range=False)
    _set_ranges(qat, np.zeros((1, 128), np.float32))
    stds[b] = noise.weight_noise(qat)[0]["delta_std"]
  assert 1.8 <= stds[bits - 1] / stds[bits] <= 2.2


def test_float_model_gives_empty_results(cnn, batch):
  assert noise.weight_noise(cnn) == []
  assert propagation.propagation(cnn, batch[0]) == []


def test_output_perturbation_grows_as_bits_shrink(cnn, batch):
  x, y = batch
  measured = {}
  for bits in (8, 4, 2):
    qat = kqreg.quantize(cnn, f"w{bits}")
    _set_ranges(qat, x)
    rows = propagation.propagation(qat, x)
    assert rows[-1]["layer"] == "output"
    assert [r["layer"] for r in rows[:-1]] == ["conv_a", "conv_b", "head"]
    assert all(r["predicted"] is not None for r in rows[:-1])
    measured[bits] = rows[-1]["measured"]
  assert 0 < measured[8] < measured[4] < measured[2]


def test_first_order_prediction_tracks_local_perturbation(cnn, batch):
  qat = kqreg.quantize(cnn, "w4")
  _set_ranges(qat, batch[0])
  for row in propagation.propagation(qat, batch[0])[:-1]:
    assert 0.5 < row["predicted"] / row["measured_local"] < 2.0, row


def test_propagation_refuses_wrong_input_shape(cnn):
  qat = kqreg.quantize(cnn, "w4")
  with pytest.raises(ValueError, match=r"probe batch has shape \(2, 5, 5, 1\).*takes \(None, 8, 8, 1\)"):
    propagation.propagation(qat, np.zeros((2, 5, 5, 1), np.float32))


def _fit(qat, batch, log_dir, epochs, initial_epoch=0):
  callback = kqreg.NoiseAnalysisCallback(log_dir, probe_data=batch[0][:8])
  qat.fit(*batch, epochs=epochs, initial_epoch=initial_epoch, verbose=0,
          validation_data=batch, callbacks=[callback])


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_callback_writes_documented_files(cnn, batch, tmp_path):
  qat = kqreg.quantize(cnn, "w4a8")
  qat.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
  _fit(qat, batch, str(tmp_path), epochs=2)
  rows = _read_csv(tmp_path / "noise.csv")
  header = list(rows[0])
  assert header[:len(kqreg.noise.NOISE_CSV_COLUMNS)] == list(kqreg.noise.NOISE_CSV_COLUMNS)
  assert {"loss", "val_loss", "accuracy", "val_accuracy"} <= set(header)
  assert [(r["epoch"], r["layer"]) for r in rows] == [
      (e, l) for e in ("0", "1") for l in ("conv_a", "conv_b", "head", "output")]
  records = [json.loads(l) for l in open(tmp_path / "noise.jsonl")]
  assert [r["epoch"] for r in records] == [0, 1]
  assert len(records[0]["weight_noise"]) == 3 and records[0]["propagation"][-1]["layer"] == "output"
  events = os.listdir(tmp_path / "noise")
  assert any(name.startswith("events.out.tfevents") for name in events)
  # TensorBoard sees each statistic as a scalar and δ as a histogram, per epoch.
  seen = {}
  for name in events:
    for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "noise" / name)):
      for value in event.summary.value:
        seen[event.step, value.tag] = (value.metadata.plugin_data.plugin_name,
                                       tf.make_ndarray(value.tensor))
  plugin, std_ratio = seen[1, "conv_a/kernel/std_ratio"]
  row = next(r for r in rows if r["epoch"] == "1" and r["layer"] == "conv_a")
  assert plugin == "scalars" and std_ratio == pytest.approx(float(row["std_ratio"]), rel=1e-6)
  plugin, buckets = seen[0, "head/kernel/delta"]
  assert plugin == "histograms" and buckets.shape == (30, 3)
  assert buckets[:, 2].sum() == np.prod(qat.get_layer("quant_head").layer.kernel.shape)
  assert seen[1, "output/propagation"][0] == "scalars"


def test_callback_every_n_epochs_records_last_epoch_too(cnn, batch, tmp_path):
  qat = kqreg.quantize(cnn, "w4")
  qat.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  qat.fit(*batch, epochs=5, verbose=0,
          callbacks=[kqreg.NoiseAnalysisCallback(str(tmp_path), every_n_epochs=2)])
  epochs = [json.loads(l)["epoch"] for l in open(tmp_path / "noise.jsonl")]
  assert epochs == [1, 3, 4]


def test_resumed_run_neither_duplicates_nor_rewrites_epochs(cnn, batch, tmp_path):
  qat = kqreg.quantize(cnn, "w4")
  qat.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  _fit(qat, batch, str(tmp_path), epochs=3)  # an interrupted run got to epoch 2
  before = _read_csv(tmp_path / "noise.csv")
  _fit(qat, batch, str(tmp_path), epochs=4, initial_epoch=2)  # resume from 2
  after = _read_csv(tmp_path / "noise.csv")
  assert [r["epoch"] for r in after] == [str(e) for e in range(4) for _ in range(4)]
  kept = [r for r in before if int(r["epoch"]) < 2]
  assert after[:len(kept)] == kept
  assert [json.loads(l)["epoch"] for l in open(tmp_path / "noise.jsonl")] == [0, 1, 2, 3]


@pytest.mark.parametrize("per_channel", [False, True])
def test_clip_fraction_counts_weights_outside_the_stored_range(per_channel):
  rng = np.random.default_rng(3)
  w = (rng.standard_normal((64, 32)) * 0.1).astype(np.float32)
  qat = kqreg.quantize(_dense_model(w), "w4", per_channel=per_channel)
  _set_ranges(qat, np.zeros((1, 64), np.float32))  # stored range: ±max|w|
  (qw,) = introspect.quantized_weights(qat)
  moved = w.copy()
  peak = np.abs(w).max(axis=0) if per_channel else np.full(32, np.abs(w).max())
  # An optimizer step moves 7 weights of channel 0 and 4 of channel 5 past the
  # range's ends (by 20%); 3 more move just inside it and stay unclipped.
  moved[:7, 0] = 1.2 * peak[0] * np.sign(w[:7, 0])
  moved[10:14, 5] = -1.2 * peak[5]
  moved[20:23, 9] = 0.99 * peak[9]
  qw.weight.assign(moved)
  (row,) = noise.weight_noise(qat)
  assert row["clip_fraction"] == pytest.approx(11 / w.size, rel=1e-6)


@pytest.mark.parametrize("layer", [
    tf_keras.layers.Dense(128, activation="relu", name="layer"),
    tf_keras.layers.Conv2D(16, 3, activation="relu", name="layer"),
    tf_keras.layers.DepthwiseConv2D(3, depth_multiplier=4, activation="relu", name="layer"),
])
def test_first_order_prediction_matches_the_linear_output_perturbation(layer):
  # The first-order model is exact in expectation at the linear output:
  # E‖δ * x‖² = Σ_c Δ_c²/12 · Σ_positions ‖x_rf‖² for δ uniform and
  # independent of x. One draw on these shapes departs from it by the
  # sample std of δ (a few percent here); 25% is a wide margin. After the
  # ReLU half of the perturbation is gone and the ratio is about √2, and the
  # 8-bit output quantizer adds its own rounding.
  rng = np.random.default_rng(4)
  shape = (256,) if isinstance(layer, tf_keras.layers.Dense) else (12, 12, 8)
  model = tf_keras.Sequential([tf_keras.Input(shape), layer])
  x = rng.standard_normal((64, *shape)).astype(np.float32)
  qat = kqreg.quantize(model, "w4a8")
  _set_ranges(qat, x)
  row = propagation.propagation(qat, x)[0]
  assert row["layer"] == "layer"
  assert 0.75 < row["predicted"] / row["measured_local"] < 1.25, row


def test_traced_statistics_follow_a_changed_quantizer():
  w = np.random.default_rng(5).standard_normal((64, 32)).astype(np.float32)
  qat = kqreg.quantize(_dense_model(w), "w4", per_channel=False)
  x = np.random.default_rng(6).standard_normal((16, 64)).astype(np.float32)
  _set_ranges(qat, x)
  (before,) = noise.weight_noise(qat)
  prop_before = propagation.propagation(qat, x)[0]["measured"]
  (wrapper,) = [l for l in qat.layers if getattr(l, "_weight_vars", None)]
  (kernel, _, variables), = wrapper._weight_vars
  wrapper._weight_vars = [(kernel, kqreg.qat.WeightQuantizer(2, per_axis=False), variables)]
  (after,) = noise.weight_noise(qat)
  # Same stored range ±p: Δ = p/7 at 4 bits, p/1 at 2 bits.
  assert after["weight_bits"] == 2
  assert after["step"] == pytest.approx(7 * before["step"], rel=1e-6)
  assert after["delta_std"] > 3 * before["delta_std"]
  assert propagation.propagation(qat, x)[0]["measured"] > 3 * prop_before


def _dithered_kernel(shape, bits, step, rng):
  """A kernel whose quantization error δ is iid uniform on (−Δ/2, Δ/2) at
  `bits`, by construction: interior grid levels plus uniform offsets, and
  one weight per output channel pinned at the peak L·Δ (L = 2^(b−1) − 1),
  so that per-channel and per-tensor symmetric ranges both give step Δ.
  Returns (kernel, pinned row of each channel in the (fan_in, C) view)."""
  fan_in, channels = int(np.prod(shape[:-1])), shape[-1]
  top = 2**(bits - 1) - 1
  levels = rng.integers(-(top - 1), top, size=(fan_in, channels))  # |m| <= L-1
  w = (levels + rng.uniform(-0.5, 0.5, size=(fan_in, channels))) * step
  pinned = np.arange(channels) % fan_in
  w[pinned, np.arange(channels)] = top * step
  return w.reshape(shape).astype(np.float32), pinned


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_sensitivity_prediction_within_the_first_order_bound_at_low_bits(kind, bits):
  """kqreg.sensitivity's `predicted` against its `measured_local` where the
  first-order model's premise holds exactly, at 2-4 bits.

  With δ iid uniform on (−Δ/2, Δ/2) (σ² = Δ²/12) and independent of x, the
  local perturbation m² = ‖δ * x‖² = Σ_c δ_cᵀ A δ_c (A = PᵀP over the
  receptive fields P) has E m² = σ² Σ_c (tr A − A_{j_c j_c}) (the pinned
  weight j_c of channel c has δ = 0) and Var m² <= 2 σ⁴ C tr(A²) (the
  uniform's fourth moment is 9/5 σ⁴ < 3 σ⁴). The model predicts
  p² = σ² C tr A. Chebyshev: |m² − E m²| <= √(Var / α) fails with
  probability <= α = 10⁻³, so m²/p² lies within t = √(Var/α)/p² of
  E m²/p². A wrong formula (Δ²/4 for Δ²/12, 2^b − 1 levels for 2^b − 2 at
  2-3 bits, a missing channel sum) falls outside.
  """
  rng = np.random.default_rng(bits)
  if kind == "dense":
    model = tf_keras.Sequential([tf_keras.Input((256,)),
                                 tf_keras.layers.Dense(256, name="layer")])
    x = rng.standard_normal((1024, 256)).astype(np.float32)
    patches = x.astype(np.float64)
  else:
    model = tf_keras.Sequential([tf_keras.Input((8, 8, 16)), tf_keras.layers.Conv2D(
        128, 3, padding="same", name="layer")])
    x = rng.standard_normal((32, 8, 8, 16)).astype(np.float32)
    patches = tf.image.extract_patches(x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1],
                                       "SAME").numpy().reshape(-1, 144).astype(np.float64)
  layer = model.get_layer("layer")
  step = 0.05
  kernel, pinned = _dithered_kernel(layer.kernel.shape, bits, step, rng)
  layer.kernel.assign(kernel)
  (row,) = kqreg.sensitivity(model, x, bits=(bits,))
  gram = patches.T @ patches
  channels = kernel.shape[-1]
  sigma2 = step**2 / 12
  p2 = sigma2 * channels * np.trace(gram)
  expected = sigma2 * (channels * np.trace(gram) - np.diag(gram)[pinned].sum()) / p2
  t = np.sqrt(2 * sigma2**2 * channels * np.sum(gram * gram) / 1e-3) / p2
  assert t < 0.5, t  # the bound is informative at these sizes
  ratio2 = (row["measured_local"] / row["predicted"])**2
  assert abs(ratio2 - expected) <= t, (row, ratio2, expected, t)
