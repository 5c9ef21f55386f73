"""The layer families beyond 2-D vision: 1-D/3-D convolutions, embeddings,
attention, recurrent layers, layer normalization, and integer inputs.

Per family: the kernels sit on the b-bit grid after a training step, a saved
model loads bit-identical, the noise statistics match a NumPy reference, and
export stores Q(w) (or names why it cannot). Then the four models of the
issue ("any model a user brings") quantize without a left-float warning,
train, and export where TFLite can.
"""

import csv
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import kqreg
from kqreg import export
from kqreg.noise import arrays
from kqreg.qat import introspect

L = tf_keras.layers
_RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------
# Models: one per group of families, and the issue's four.


def _conv1d_families():
  inputs = tf_keras.Input((12, 3))
  x = L.Conv1D(6, 3, padding="same", activation="relu", name="conv1d")(inputs)
  x = L.DepthwiseConv1D(3, depth_multiplier=2, padding="same",
                        name="dw1d")(x)
  x = L.SeparableConv1D(6, 3, padding="same", activation="relu",
                        name="sep1d")(x)
  x = L.Conv1DTranspose(4, 3, strides=2, padding="same", name="tconv1d")(x)
  x = L.AveragePooling1D(2, name="avg1d")(x)
  x = L.MaxPooling1D(2, name="max1d")(x)
  x = L.GlobalAveragePooling1D(name="gap1d")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="conv1d_m")


def _conv3d_families():
  inputs = tf_keras.Input((2, 4, 4, 2))
  x = L.Conv3D(4, 3, padding="same", activation="relu", name="conv3d")(inputs)
  x = L.Conv3DTranspose(3, 3, strides=2, padding="same", name="tconv3d")(x)
  x = L.MaxPooling3D(2, name="max3d")(x)
  x = L.GlobalAveragePooling3D(name="gap3d")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="conv3d_m")


def _sequence_families():
  inputs = tf_keras.Input((7,), dtype="int32")
  x = L.Embedding(20, 8, name="emb")(inputs)
  x = L.LSTM(6, return_sequences=True, name="lstm")(x)
  x = L.GRU(5, name="gru")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="seq_m")


def _bidirectional_families():
  inputs = tf_keras.Input((5, 4))
  x = L.Bidirectional(L.LSTM(3, return_sequences=True, name="lstm"),
                      name="bi_lstm")(inputs)
  x = L.Bidirectional(L.SimpleRNN(3, name="rnn"), name="bi_rnn")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="bi_m")


def _attention_families():
  inputs = tf_keras.Input((6, 8))
  x = L.EinsumDense("abc,cd->abd", output_shape=(None, 8), bias_axes="d",
                    name="einsum")(inputs)
  a = L.MultiHeadAttention(2, 4, name="mha")(x, x)
  x = L.LayerNormalization(name="ln")(x + a)
  x = L.GlobalAveragePooling1D(name="gap1d")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="attn_m")


def _inputs_for(model, n=8, seed=0):
  rng = np.random.default_rng(seed)
  spec = model.inputs[0]
  if spec.dtype.is_integer:
    return rng.integers(0, 20, (n, *spec.shape[1:])).astype(np.int32)
  return rng.random((n, *spec.shape[1:]), dtype=np.float32)


def _quantize(model, policy="w4a8", **kwargs):
  """`kqreg.quantize`, failing on any warning (a layer left float)."""
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    return kqreg.quantize(model, policy, **kwargs)


def _train_step(qat, x, callbacks=()):
  # Eagerly: tracing a train step of an LSTM costs ten times the step.
  qat.compile("adam", "mse", run_eagerly=True)
  qat.fit(x, np.zeros((len(x), *qat.output_shape[1:]), np.float32),
          epochs=1, verbose=0, callbacks=list(callbacks))
  qat(x, training=True)  # ranges from the weights as they are now
  return qat


# ----------------------------------------------------------------------------
# A NumPy reference of the quantizer, independent of kqreg's TensorFlow code.


def _np_channels_last(w, layout):
  if layout == "transpose":
    return np.swapaxes(w, -1, -2)
  if layout == "depthwise":
    return w.reshape(*w.shape[:-2], 1, w.shape[-2] * w.shape[-1])
  return w


def _np_quantize(w, bits, per_channel):
  """Symmetric narrow fake-quant on ±max|w|, channels on the last axis, as
  TensorFlow's FakeQuantWithMinMaxVars computes it in float32."""
  flat = w.reshape(-1, w.shape[-1]) if per_channel else w.reshape(-1, 1)
  peak = np.abs(flat).max(axis=0).astype(np.float32)
  half = np.float32(2**(bits - 1) - 1)
  step = (peak + peak) / (2 * half)
  q = np.floor(np.clip(flat, -half * step, half * step) / step + half +
               np.float32(0.5)) - half
  return (q * step).astype(np.float32).reshape(w.shape), step, q


_LAYOUT = {"depthwise_kernel": "depthwise"}


def _layout(qw):
  if isinstance(qw.wrapper.layer, (L.Conv1DTranspose, L.Conv3DTranspose)):
    return "transpose"
  return _LAYOUT.get(qw.weight_name, "last")


# ----------------------------------------------------------------------------
# Per family: grid, save/load, noise statistics.

_FAMILY_MODELS = {
    "conv1d": (_conv1d_families, {
        "conv1d/kernel", "dw1d/depthwise_kernel", "sep1d/depthwise_kernel",
        "sep1d/pointwise_kernel", "tconv1d/kernel", "head/kernel"}),
    "conv3d": (_conv3d_families, {
        "conv3d/kernel", "tconv3d/kernel", "head/kernel"}),
    "sequence": (_sequence_families, {
        "emb/embeddings", "lstm/kernel", "lstm/recurrent_kernel",
        "gru/kernel", "gru/recurrent_kernel", "head/kernel"}),
    # Each direction's kernels, named apart by their sub-layer.
    "bidirectional": (_bidirectional_families, {
        f"bi_{rnn}/{direction}_{rnn}/{cell}/{kernel}"
        for rnn, cell in (("lstm", "lstm_cell"), ("rnn", "simple_rnn_cell"))
        for direction in ("forward", "backward")
        for kernel in ("kernel", "recurrent_kernel")} | {"head/kernel"}),
    "attention": (_attention_families, {
        "einsum/kernel", "mha/query/kernel", "mha/key/kernel",
        "mha/value/kernel", "mha/attention_output/kernel", "head/kernel"}),
}


@pytest.mark.parametrize("group", sorted(_FAMILY_MODELS))
def test_family_kernels_grid_save_load_and_noise(group, tmp_path):
  build, expected = _FAMILY_MODELS[group]
  tf_keras.utils.set_random_seed(0)
  model = build()
  x = _inputs_for(model)
  bits = 3
  # The 1-D kernels per channel (export refuses them, QAT does not): their
  # transposed and depthwise layouts then decide which weights share a range.
  qat = _quantize(model, f"w{bits}a8",
                  **({"per_channel": True} if group == "conv1d" else {}))
  callback = kqreg.NoiseAnalysisCallback(str(tmp_path / "noise"),
                                         histograms=False)
  _train_step(qat, x, [callback])
  qws = introspect.quantized_weights(qat)
  names = {f"{qw.layer_name}/{qw.weight_name}" for qw in qws}
  assert names == expected

  # 1. Every kernel on the b-bit grid: at most 2^b - 1 levels per channel,
  #    equal to the NumPy fake-quant of the weights on their own range.
  rows = {(r["layer"], r["weight"]): r
          for r in kqreg.noise.weight_noise(qat, traced=False)}
  for qw in qws:
    layout = _layout(qw)
    per_channel = bool(qw.quantizer.per_axis)
    w = _np_channels_last(qw.weight.numpy(), layout)
    got = _np_channels_last(qw.quantized().numpy(), layout)
    want, step, levels = _np_quantize(w, bits, per_channel)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * step.max(),
                               err_msg=qw.weight_name)
    flat_levels = levels.reshape(-1, levels.shape[-1])
    assert max(len(np.unique(c)) for c in flat_levels.T) <= 2**bits - 1
    assert np.abs(levels).max() <= 2**(bits - 1) - 1
    # 3. The statistics of weight_noise against kqreg.noise.arrays on the
    #    NumPy Q(w): same step, δ and clipping.
    reference = arrays.delta_statistics(
        w, want, step, grid_min=-(2**(bits - 1) - 1) * step,
        grid_max=(2**(bits - 1) - 1) * step)
    row = rows[(qw.layer_name, qw.weight_name)]
    assert row["weight_bits"] == bits and row["kind"] == "round"
    for key in ("step", "step_min", "step_max", "model_std", "delta_std",
                "rel_norm", "std_ratio"):
      assert row[key] == pytest.approx(reference[key], rel=1e-4), (
          qw.weight_name, key)
    assert row["delta_max_abs"] == pytest.approx(reference["delta_max_abs"],
                                                 abs=1e-6 * step.max())
    assert row["clip_fraction"] == 0.0 == reference["clip_fraction"]

  # The noise callback recorded every new kernel.
  with open(tmp_path / "noise" / "noise.csv", newline="") as f:
    recorded = {f"{r['layer']}/{r['weight']}" for r in csv.DictReader(f)}
  assert recorded == expected

  # 2. Saved and loaded inside quantize_scope: bit-identical.
  expected_out = qat(x, training=False).numpy()
  path = str(tmp_path / "model.keras")
  qat.save(path)
  with kqreg.quantize_scope():
    loaded = tf_keras.models.load_model(path)
  np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                expected_out)
  for a, b in zip(loaded.get_weights(), qat.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_propagation_reruns_attention_on_its_query_and_value():
  # MultiHeadAttention is called with a query and a value: the probe must
  # give it both (`layer.input` is the query alone).
  tf_keras.utils.set_random_seed(0)
  x = _inputs_for(_attention_families())
  qat = _train_step(_quantize(_attention_families(), "w4a8"), x)
  rows = {r["layer"]: r for r in kqreg.noise.propagation(qat, x)}
  assert {"mha", "einsum", "head", "output"} <= set(rows)
  assert 0 < rows["mha"]["measured_local"] < 1  # 4-bit noise, not garbage
  assert rows["mha"]["predicted"] is None  # four kernels: no first-order model


def test_family_table_and_channel_choices():
  configs = kqreg.qat.families
  cases = {
      L.Conv1D(3, 3): ((("kernel", "last"),), False),
      L.Conv3D(3, 3): ((("kernel", "last"),), True),
      L.Conv1DTranspose(3, 3): ((("kernel", "transpose"),), False),
      L.Conv3DTranspose(3, 3): ((("kernel", "transpose"),), False),
      L.DepthwiseConv1D(3): ((("depthwise_kernel", "depthwise"),), False),
      L.Embedding(4, 2): ((("embeddings", "last"),), False),
      L.EinsumDense("ab,bc->ac", 3): ((("kernel", "last"),), False),
      L.LSTM(2): ((("cell.kernel", "last"), ("cell.recurrent_kernel", "last")),
                  False),
      L.GRU(2): ((("cell.kernel", "last"), ("cell.recurrent_kernel", "last")),
                 False),
      L.Bidirectional(L.SimpleRNN(2)): (tuple(
          (f"{direction}_layer.cell.{kernel}", "last")
          for direction in ("forward", "backward")
          for kernel in ("kernel", "recurrent_kernel")), False),
  }
  for layer, (weights, per_channel) in cases.items():
    config = configs.config_for_layer(layer, weight_bits=4, activation_bits=8)
    assert (config.weights, config.per_channel) == (weights, per_channel), layer
  ln = configs.config_for_layer(L.LayerNormalization(), weight_bits=4,
                                activation_bits=8)
  assert ln.weights == () and ln.quantize_output
  # Every new family says what export makes of it.
  statuses = {f.layer_type.__name__: f.export.split(":")[0].split()[0]
              for f in configs.LAYER_FAMILIES if f.export}
  assert statuses == _EXPORT_STATUS


_EXPORT_STATUS = {
    "Conv1D": "integer", "DepthwiseConv1D": "integer",
    "AveragePooling1D": "integer", "AveragePooling2D": "integer",
    "EinsumDense": "integer", "Embedding": "integer",
    "Conv1DTranspose": "hybrid", "SeparableConv1D": "hybrid",
    "Normalization": "hybrid",
    "MultiHeadAttention": "hybrid", "QuantizableMultiHeadAttention": "integer",
    "Conv3D": "float",
    "Conv3DTranspose": "float", "LayerNormalization": "float",
    "QuantizableLayerNormalization": "integer",
    # Unrolled; a rolled loop is refused (layer_problems).
    "LSTM": "float", "GRU": "float", "Bidirectional": "float",
}


# ----------------------------------------------------------------------------
# Integer inputs.


def test_integer_input_gets_no_input_quantizer():
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input((5,), dtype="int32")
  features = tf_keras.Input((3,))
  x = L.Flatten()(L.Embedding(10, 4, name="emb")(inputs))
  x = L.Concatenate(name="cat")([x, features])
  model = tf_keras.Model([inputs, features], L.Dense(2, name="head")(x))
  qat = _quantize(model, "w4a8")
  quantizers = [l for l in qat.layers if type(l).__name__ == "QuantizeLayer"]
  # The float input is quantized, the token ids pass through as they are.
  assert len(quantizers) == 1 and quantizers[0].input.dtype == tf.float32
  assert kqreg.qat.plan(tf_keras.Model(inputs, L.Embedding(10, 4)(inputs)),
                        "w4a8").input_bits is None
  ids = np.arange(10, dtype=np.int32).reshape(2, 5)
  out = qat([ids, np.ones((2, 3), np.float32)], training=True)
  assert out.shape == (2, 2) and np.all(np.isfinite(out))


# ----------------------------------------------------------------------------
# Mixed precision and the first-order model.


def test_sensitivity_and_allocation_count_every_new_kernel():
  tf_keras.utils.set_random_seed(0)
  model = _sequence_families()
  x = _inputs_for(model)
  layers, _ = kqreg.mixed_precision.quantizable_layers(model, "w4a8")
  params = {l.name: l.params for l in layers}
  assert params == {"emb": 160, "lstm": 8 * 24 + 6 * 24,
                    "gru": 6 * 15 + 5 * 15, "head": 15}
  rows = kqreg.sensitivity(model, x, bits=(2, 8))
  by_layer = {(r["layer"], r["bits"]): r for r in rows}
  assert {layer for layer, _ in by_layer} == set(params)
  # The first-order prediction applies to the table lookup, not the
  # recurrent layers (two kernels, a nonlinear recurrence).
  assert by_layer["emb", 2]["predicted"] is not None
  assert by_layer["lstm", 2]["predicted"] is None
  assert by_layer["lstm", 2]["measured"] > by_layer["lstm", 8]["measured"] > 0
  assert by_layer["lstm", 8]["params"] == params["lstm"]


@pytest.mark.parametrize("layer, shape", [
    (L.Conv1D(32, 3, padding="same", name="layer"), (24, 8)),
    (L.Conv3D(16, 3, name="layer"), (4, 6, 6, 4)),
    (L.EinsumDense("abc,cde->abde", (None, 4, 16), name="layer"), (6, 32)),
    (L.Embedding(64, 64, name="layer"), (16,)),
])
def test_first_order_prediction_matches_local_perturbation(layer, shape):
  rng = np.random.default_rng(4)
  integer = isinstance(layer, L.Embedding)
  model = tf_keras.Sequential([
      tf_keras.Input(shape, dtype="int32" if integer else "float32"), layer])
  x = (rng.integers(0, 64, (64, *shape)).astype(np.int32) if integer else
       rng.standard_normal((64, *shape)).astype(np.float32))
  qat = _quantize(model, "w4")
  qat(x, training=True)
  row = kqreg.noise.propagation(qat, x)[0]
  assert 0.75 < row["predicted"] / row["measured_local"] < 1.25, row


# ----------------------------------------------------------------------------
# Export, and the issue's four models.


def _cnn1d():
  inputs = tf_keras.Input((16, 3))
  x = L.Conv1D(8, 3, padding="same", activation="relu", name="c1")(inputs)
  x = L.Conv1D(8, 3, padding="same", activation="relu", name="c2")(x)
  x = L.GlobalAveragePooling1D(name="gap")(x)
  return tf_keras.Model(inputs, L.Dense(4, name="head")(x), name="cnn1d")


def _clip():
  inputs = tf_keras.Input((4, 8, 8, 1))
  x = L.Conv3D(4, 3, padding="same", activation="relu", name="c3")(inputs)
  x = L.GlobalAveragePooling3D(name="gap")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="clip")


def _transformer_block(ln_axis=-1):
  inputs = tf_keras.Input((6, 8))
  x = L.Dense(8, name="embed")(inputs)
  a = L.MultiHeadAttention(2, 4, name="mha")(x, x)
  x = L.LayerNormalization(axis=ln_axis, name="ln")(x + a)
  x = L.GlobalAveragePooling1D(name="gap")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="block")


def _token_lstm(cell=L.LSTM, unroll=False, units=6):
  inputs = tf_keras.Input((7,), dtype="int32")
  x = L.Embedding(20, 8, name="emb")(inputs)
  x = cell(units, unroll=unroll, name="rnn")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="tokens")


def _dequantized(const):
  values = const["values"].reshape(const["shape"]).astype(np.float64)
  scales = np.asarray(const["scales"], np.float64)
  shape = [1] * values.ndim
  if scales.size > 1:
    shape[const["quantized_dimension"] or 0] = -1
  return values * scales.reshape(shape)


def _stored_types(report, qat):
  """Kernel -> the file type holding exactly its Q(w) (as a multiset: the
  file's layout differs), or None if no tensor does."""
  with open(report["path"], "rb") as f:
    info = export.inspect_tflite(f.read())
  found = {}
  for qw in introspect.quantized_weights(qat):
    q = np.sort(qw.quantized().numpy().reshape(-1).astype(np.float64))
    step = float(np.min(qw.grid()[2].numpy()))
    found[f"{qw.layer_name}/{qw.weight_name}"] = None
    for c in info["constants"]:
      if c["elements"] != q.size or c["values"] is None:
        continue
      values = (_dequantized(c) if c["type"] in ("INT4", "INT8") else
                c["values"].astype(np.float64))
      if np.allclose(np.sort(values.reshape(-1)), q, rtol=0, atol=1e-4 * step):
        found[f"{qw.layer_name}/{qw.weight_name}"] = c["type"]
        break
  return found


def _export(qat, tmp_path, x):
  return export.export_tflite(
      qat, str(tmp_path / "m.tflite"), float_reference=False,
      representative_data=None if x.dtype.kind == "i" else x)


_ISSUE_MODELS = {"cnn1d": _cnn1d, "clip": _clip,
                 "transformer": _transformer_block}


@pytest.mark.parametrize("name", sorted(_ISSUE_MODELS))
def test_issue_models_quantize_train_and_export(name, tmp_path):
  tf_keras.utils.set_random_seed(0)
  model = _ISSUE_MODELS[name]()
  x = _inputs_for(model)
  qat = _train_step(_quantize(model, "w4a8"), x)  # no left-float warning
  problems = export.export_problems(qat)
  report = _export(qat, tmp_path, x)
  stored = _stored_types(report, qat)
  if name == "cnn1d":  # integers throughout, every kernel INT4 = Q(w)
    assert problems == [] and report["float_ops"] == []
    assert stored == {"c1/kernel": "INT4", "c2/kernel": "INT4",
                      "head/kernel": "INT4"}
    check = export.verify_tflite(report["path"], qat, x)
    assert check["max_abs_diff"] <= 1.0  # one output step
  elif name == "clip":  # TFLite has no integer CONV_3D
    assert [p.split(":")[0] for p in problems] == ["c3"]
    assert "CONV_3D" in report["float_ops"]
    assert stored == {"c3/kernel": "FLOAT32", "head/kernel": "INT4"}
  else:
    # The attention runs in integers (test_attention_runs_in_int8_in_the_file),
    # and so does the Dense on the sequence, rebuilt as an EinsumDense, and
    # the LayerNorm, computed op by op with a range between any two.
    assert type(qat.get_layer("quant_embed").layer) is L.EinsumDense
    assert (type(qat.get_layer("quant_ln").layer) is
            kqreg.qat.QuantizableLayerNormalization)
    assert problems == [] and report["float_ops"] == []
    assert stored["embed/kernel"] == "INT4"
    assert all(stored[f"mha/{p}/kernel"] == "INT4" for p in (
        "query", "key", "value", "attention_output"))
    assert stored["head/kernel"] == "INT4"
    export.check_exportable(qat)
    # A LayerNorm over another axis keeps Keras's layer: float in the file,
    # and export_problems says so.
    other = _transformer_block(ln_axis=1)
    qat = _train_step(_quantize(other, "w4a8"), x)
    assert type(qat.get_layer("quant_ln").layer) is L.LayerNormalization
    problems = export.export_problems(qat)
    assert [p.split(":")[0] for p in problems] == ["ln"]
    assert "float" in problems[0]
    with pytest.raises(export.ExportError, match="ln"):
      export.check_exportable(qat)


def test_token_model_trains_and_export_names_what_it_refuses(tmp_path):
  tf_keras.utils.set_random_seed(0)
  model = _token_lstm()  # token ids -> Embedding -> LSTM -> Dense
  x = _inputs_for(model)
  qat = _train_step(_quantize(model, "w4a8"), x)
  assert not any(type(l).__name__ == "QuantizeLayer" for l in qat.layers)
  problems = export.export_problems(qat)
  assert [p.split(":")[0] for p in problems] == ["rnn", "emb"], problems
  # Each with its own fix: a rolled loop fails at any bits; the table at 4.
  rnn, emb = problems
  assert rnn.endswith("build it with unroll=True, which converts (the cell "
                      "runs in float)"), rnn
  assert emb.endswith("give it 5..8 bits (e.g. 'w4a8,emb=w8a8'), or keep it "
                      "float ('skip=emb')"), emb
  with pytest.raises(export.ExportError, match="unroll=True"):
    _export(qat, tmp_path, x)
  # Rolled inside a Bidirectional too.
  (problem,) = export.export_problems(
      _quantize(_token_lstm(_bidirectional_gru), "w4a8,emb=w8a8"))
  assert problem.startswith("rnn: the recurrent loop does not convert")


def test_integer_input_model_exports_with_its_ids_as_they_are(tmp_path):
  # Token ids feed the file as int32 (no input quantizer, even with
  # representative data) and an 8-bit table exports in integers, exactly.
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input((7,), dtype="int32")
  y = L.GlobalAveragePooling1D(name="gap")(L.Embedding(20, 8, name="emb")(inputs))
  model = tf_keras.Model(inputs, L.Dense(3, name="head")(y))
  x = _inputs_for(model, n=32)
  qat = _train_step(_quantize(model, "w4a8,emb=w8a8"), x)
  report = export.export_tflite(qat, str(tmp_path / "ids.tflite"),
                                representative_data=x, float_reference=False)
  assert export.export_problems(qat) == [] and report["float_ops"] == []
  assert report["latency"]["input_dtypes"] == ["int32"]
  assert _stored_types(report, qat) == {"emb/embeddings": "INT8",
                                        "head/kernel": "INT4"}
  check = export.verify_tflite(report["path"], qat, x)
  assert check["diff_units"] == "output_step"
  assert check["max_abs_diff"] <= 1.001  # one output step


def _bidirectional_gru(units, unroll, name):
  return L.Bidirectional(L.GRU(units, unroll=unroll), name=name)


@pytest.mark.parametrize("cell", [L.LSTM, L.GRU, _bidirectional_gru],
                         ids=["lstm", "gru", "bidirectional"])
def test_unrolled_recurrence_exports_in_float_on_its_grid(cell, tmp_path):
  tf_keras.utils.set_random_seed(0)
  model = _token_lstm(cell, unroll=True)
  x = _inputs_for(model, n=32)
  qat = _train_step(_quantize(model, "w4a8,emb=w8a8"), x)
  problems = export.export_problems(qat)
  assert [p.split(":")[0] for p in problems] == ["rnn"], problems
  assert "float when unrolled" in problems[0]
  with pytest.warns(UserWarning, match="rnn: .* float when unrolled"):
    report = _export(qat, tmp_path, x)
  assert {"LOGISTIC", "TANH"} <= set(report["float_ops"])
  # The cell's kernels are in the file as float32 holding exactly Q(w).
  cells = {f"rnn/{qw.weight_name}": "FLOAT32"
           for qw in introspect.quantized_weights(qat)
           if qw.layer_name == "rnn"}
  assert len(cells) == (4 if cell is _bidirectional_gru else 2)
  assert _stored_types(report, qat) == {
      "emb/embeddings": "INT8", "head/kernel": "INT4", **cells}
  check = export.verify_tflite(report["path"], qat, x)
  # The cell runs in float in both, in another op order: a last-bit
  # difference can flip a rounding at the cell's output quantizer, which the
  # head carries on as a step or two. Most outputs agree to one step.
  assert check["max_abs_diff"] <= 4 and check["mean_abs_diff"] <= 0.5


def test_per_channel_1d_kernels_are_refused_with_the_reason(tmp_path):
  tf_keras.utils.set_random_seed(0)
  qat = _quantize(_cnn1d(), "w4a8", per_channel=True)
  problems = export.export_problems(qat)
  assert [p.split(":")[0] for p in problems] == ["c1", "c2"]
  assert all("per-channel Conv1D" in p for p in problems)
  assert problems[0].endswith("quantize per tensor (per_channel=False, "
                              "--per_channel=false), or keep it float "
                              "('skip=c1')"), problems[0]
  with pytest.raises(export.ExportError, match="per-channel Conv1D"):
    export.export_tflite(qat, str(tmp_path / "m.tflite"),
                         float_reference=False)
  assert export.export_problems(_quantize(_cnn1d(), "w4a8,skip=c1+c2",
                                          per_channel=True)) == []


def test_input_normalization_is_ranged_so_the_first_conv_runs_in_integers(
    tmp_path):
  # Keras's EfficientNets start with Rescaling and an adapted Normalization.
  x = np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)
  norm = L.Normalization(name="norm")
  norm.adapt(x)
  inputs = tf_keras.Input((8, 8, 3))
  h = L.Conv2D(4, 3, name="conv")(norm(L.Rescaling(1.0, name="scale")(inputs)))
  model = tf_keras.Model(
      inputs, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(h)))
  qat = _train_step(_quantize(model, "w4a8"), x)  # no layer left float
  (problem,) = export.export_problems(qat)
  assert problem.startswith("norm: Normalization hybrid"), problem
  with pytest.warns(UserWarning, match="norm: Normalization hybrid"):
    report = _export(qat, tmp_path, x)
  # Without its range the conv after it ran in float too.
  assert sorted(report["float_ops"]) == ["MUL", "SUB"], report["float_ops"]


def test_time_distributed_layers_quantize_as_the_layer_they_wrap(tmp_path):
  tf_keras.utils.set_random_seed(0)
  x = np.random.default_rng(0).random((16, 4, 8, 8, 3), dtype=np.float32)
  inputs = tf_keras.Input((4, 8, 8, 3))
  h = L.TimeDistributed(L.Conv2D(4, 3, activation="relu"), name="td_conv")(
      inputs)
  h = L.TimeDistributed(L.GlobalAveragePooling2D(), name="td_gap")(h)
  h = L.TimeDistributed(L.Dense(5), name="td_dense")(h)
  model = tf_keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(h)))
  qat = _train_step(_quantize(model, "w4a8"), x)  # no layer left float
  # Each kernel as its layer's family quantizes it: conv per channel.
  assert [(qw.layer_name, qw.weight_name, bool(qw.quantizer.per_axis))
          for qw in introspect.quantized_weights(qat)] == [
              ("td_conv", "kernel", True), ("td_dense", "kernel", False),
              ("head", "kernel", False)]
  assert qat.get_layer("quant_td_gap")._output_quantizers  # pylint: disable=protected-access
  path = str(tmp_path / "m.keras")
  qat.save(path)
  with kqreg.quantize_scope():
    loaded = tf_keras.models.load_model(path)
  np.testing.assert_array_equal(loaded(x, training=False).numpy(),
                                qat(x, training=False).numpy())
  report = _export(qat, tmp_path, x)
  assert report["float_ops"] == []
  assert _stored_types(report, qat) == {
      "td_conv/kernel": "INT4", "td_dense/kernel": "INT4",
      "head/kernel": "INT4"}
  check = export.verify_tflite(report["path"], qat, x)
  assert check["max_abs_diff"] <= 1.001  # one output step


def test_time_distributed_layers_are_refused_as_the_layer_they_wrap():
  inputs = tf_keras.Input((3, 8, 2))
  h = L.TimeDistributed(L.Conv1D(4, 3), name="td_conv1d")(inputs)
  model = tf_keras.Model(inputs, L.Dense(2, name="head")(L.Flatten()(h)))
  assert export.export_problems(_quantize(model, "w4a8")) == []
  assert export.export_problems(_quantize(model, "w4a8",
                                          per_channel=True)) == [
      "td_conv1d: per-channel TimeDistributed(Conv1D) weights (TFLite runs "
      "it as a 2-D convolution and refuses the moved channel axis); quantize "
      "per tensor (per_channel=False, --per_channel=false), or keep it float "
      "('skip=td_conv1d')"]


def test_3d_pooling_is_refused_with_what_converts_instead():
  problems = export.export_problems(_quantize(_conv3d_families(), "w4a8"))
  (pooling,) = [p for p in problems if p.startswith("max3d:")]
  assert pooling.endswith("no 3-D pooling kernel (TF Select only); "
                          "downsample with a strided Conv3D instead (CONV_3D "
                          "converts)"), pooling


def _attention_only(heads=2, key_dim=4):
  inputs = tf_keras.Input((6, 8))
  a = L.MultiHeadAttention(heads, key_dim, name="mha")(inputs, inputs)
  x = L.GlobalAveragePooling1D(name="gap")(a)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="attention")


@pytest.mark.parametrize("shape", [(5, 8), (3, 5, 8), (None, 8)])
def test_dense_on_a_sequence_is_rebuilt_as_the_same_einsum(shape):
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input(shape)
  model = tf_keras.Model(inputs, L.Dense(6, activation="relu",
                                         name="mlp")(inputs))
  make = kqreg.qat.rewrites._integer_friendly(model, model.get_layer("mlp"))
  swapped = kqreg.qat.rewrites._swap_layers(model, {"mlp": make})
  layer = swapped.get_layer("mlp")
  assert type(layer) is L.EinsumDense and layer.activation.__name__ == "relu"
  assert [w.name for w in swapped.weights] == [w.name for w in model.weights]
  x = np.random.default_rng(0).normal(
      size=(4, *[d or 7 for d in shape])).astype("float32")
  np.testing.assert_allclose(swapped(x).numpy(), model(x).numpy(),
                             rtol=1e-5, atol=1e-5)
  # A Dense on vectors or on a ragged sequence is left as it is, and
  # weight-only policies swap none.
  vectors = tf_keras.Sequential([tf_keras.Input((8,)), L.Dense(2)])
  assert kqreg.qat.rewrites._integer_friendly(vectors,
                                              vectors.layers[0]) is None
  ragged = tf_keras.Input((None, 8), ragged=True)
  ragged_dense = L.Dense(2)
  ragged_model = tf_keras.Model(ragged, ragged_dense(ragged))
  assert kqreg.qat.rewrites._integer_friendly(ragged_model,
                                              ragged_dense) is None
  qat = _quantize(model, "w4")
  assert type(qat.get_layer("quant_mlp").layer) is L.Dense


@pytest.mark.parametrize("case", ["self", "cross", "causal", "mask", "scores",
                                  "length", "training", "rank4"])
def test_quantizable_attention_computes_multi_head_attention(case):
  # Same weights, same function as Keras's layer: on the integer path
  # (rank-3 inputs; every hook called once a call) and on Keras's own (rank
  # 4, attention over two axes, which kqreg.quantize does not swap).
  from kqreg.qat import attention  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  rank4 = case == "rank4"
  shape = {"rank4": (3, 5, 8), "length": (None, 8)}.get(case, (5, 8))
  layer = L.MultiHeadAttention(
      2, 4, value_dim=3, output_shape=7 if case == "cross" else None,
      attention_axes=(1, 2) if rank4 else None, name="mha")
  inputs = [tf_keras.Input(shape), tf_keras.Input(
      (4, 6) if case == "cross" else shape)]
  if case == "cross":  # a key of its own, wider than the value
    inputs.append(tf_keras.Input((4, 10)))
  if case == "mask":
    inputs.append(tf_keras.Input((5, 5), dtype="bool"))
  kwargs = {"use_causal_mask": case == "causal",
            "return_attention_scores": case == "scores"}
  if case == "cross":
    kwargs["key"] = inputs[2]
  if case == "mask":
    kwargs["attention_mask"] = inputs[2]
  model = tf_keras.Model(inputs, layer(inputs[0], inputs[1], **kwargs))
  assert attention.swappable(layer) is not rank4
  swapped = kqreg.qat.rewrites._swap_layers(
      model, {"mha": lambda layer, x: attention.as_quantizable(layer)})
  copy = swapped.get_layer("mha")
  assert type(copy).__name__ == "QuantizableMultiHeadAttention"
  assert [w.name for w in swapped.weights] == [w.name for w in model.weights]
  calls = []
  for hook in attention.HOOKS:
    setattr(copy, hook, lambda t, hook=hook: calls.append(hook) or t)
  rng = np.random.default_rng(0)
  x = [rng.normal(size=(4, *[d or 6 for d in t.shape[1:]])).astype(
      t.dtype.name if t.dtype.name != "bool" else "float32")
       for t in model.inputs]
  if case == "mask":
    x[2] = rng.random((4, 5, 5)) < 0.7
  training = case == "training"
  got = swapped(x, training=training)
  want = model(x, training=training)
  for g, w in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
    np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
  assert calls == ([] if rank4 else list(attention.HOOKS))


def test_attention_runs_in_int8_in_the_file(tmp_path):
  # w4a8: the attention is swapped for QuantizableMultiHeadAttention, whose
  # scaled query, scores, probabilities and context have ranges. The file
  # then runs every op in integers: int8 BATCH_MATMUL for q.k and p.v, an
  # int8 SOFTMAX on TFLite's fixed output grid, which QAT trained on, and
  # FULLY_CONNECTED projections with fused biases and INT4 kernels = Q(w).
  tf_keras.utils.set_random_seed(0)
  model = _attention_only()
  x = _inputs_for(model, n=64)
  qat = _train_step(_quantize(model, "w4a8"), x)
  wrapper = qat.get_layer("quant_mha")
  assert type(wrapper.layer).__name__ == "QuantizableMultiHeadAttention"
  ranges = {w.name.split("/")[-1].split(":")[0] for w in wrapper.weights}
  assert {"scaled_query_post_activation_min", "score_post_activation_max",
          "context_post_activation_min"} <= ranges
  # The probabilities: 256 levels on [0, 1), no trained range.
  probabilities = qat.get_layer("quant_mha").layer._probability_activation
  assert probabilities.quantizer.get_config() == {
      "num_bits": 8, "low": 0.0, "high": 1.0}
  assert export.export_problems(qat) == []
  report = _export(qat, tmp_path, x)
  assert report["float_ops"] == []
  assert report["op_counts"]["BATCH_MATMUL"] == 2
  assert report["op_counts"]["SOFTMAX"] == 1
  with open(report["path"], "rb") as f:
    info = export.inspect_tflite(f.read())
  tensors = info["tensors"]
  for op in info["ops"]:
    if op["op"] in ("BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED", "MUL"):
      types = {tensors[i]["type"] for i in op["inputs"] + op["outputs"]
               if i >= 0 and not tensors[i]["constant"]}
      assert types == {"INT8"}, (op["op"], types)
    if op["op"] == "SOFTMAX":
      out = tensors[op["outputs"][0]]
      assert (float(out["scale"][0]), int(out["zero_point"][0])) == (
          1 / 256, -128)
  assert _stored_types(report, qat) == {
      "mha/query/kernel": "INT4", "mha/key/kernel": "INT4",
      "mha/value/kernel": "INT4", "mha/attention_output/kernel": "INT4",
      "head/kernel": "INT4"}
  # The file computes Keras's fake-quant graph in integer arithmetic: the
  # same output grid, so LiteRT and Keras differ by whole output steps, and
  # mostly not at all (an int8 SOFTMAX's exp table or a requantization can
  # flip a rounding, carried on as a step or two).
  dequantize, = [op for op in info["ops"]
                 if op["outputs"] == [info["outputs"][0]]]
  step = float(tensors[dequantize["inputs"][0]]["scale"][0])
  file_y, _ = export.tflite_predict(report["path"], x)
  diff = np.abs(file_y - qat.predict(x, verbose=0)) / step
  np.testing.assert_allclose(diff, np.round(diff), atol=0.01)
  assert np.median(diff) == 0 and diff.mean() < 1.0, (diff.mean(), diff.max())


def test_weight_only_or_opted_out_attention_keeps_keras_layer(tmp_path):
  # Without activation bits there are no ranges to train: the layer stays
  # Keras's own, its four kernels quantized. integer_attention=False keeps
  # it too (its scores then run in float in the file).
  qat = _quantize(_attention_only(), "w4")
  assert type(qat.get_layer("quant_mha").layer) is L.MultiHeadAttention
  problem = _kept_as_keras_layer_and_float_in_the_file(
      _attention_only, "w4a8", {"integer_attention": False}, "mha",
      L.MultiHeadAttention, {"BATCH_MATMUL", "SOFTMAX"}, tmp_path)
  assert "hybrid" in problem


def _kept_as_keras_layer_and_float_in_the_file(build, policy, options, name,
                                               keras_class, float_ops,
                                               tmp_path):
  """Trains `build()` quantized with `options` opting layer `name` out of
  its integer form; checks it stayed `keras_class` and that the file runs
  `float_ops` in float; returns what export_problems says of it."""
  tf_keras.utils.set_random_seed(0)
  model = build()
  x = _inputs_for(model, n=16)
  qat = _train_step(_quantize(model, policy, **options), x)
  assert type(qat.get_layer(f"quant_{name}").layer) is keras_class
  problems = export.export_problems(qat)
  assert [p.split(":")[0] for p in problems] == [name]
  report = _export(qat, tmp_path, x)
  assert float_ops <= set(report["float_ops"])
  return problems[0]


# LayerNormalization -----------------------------------------------------------

_LN_CASES = {  # case: (LayerNormalization arguments, hooks called, input shape)
    "default": ({}, None, (5, 8)),
    "no_center": ({"center": False}, ("_beta_activation", "_scaled_activation"),
                  (5, 8)),
    "no_scale": ({"scale": False}, ("_gamma_activation", "_scaled_activation"),
                 (5, 8)),
    "neither": ({"center": False, "scale": False},
                ("_normalized_activation", "_gamma_activation",
                 "_scaled_activation", "_beta_activation"), (5, 8)),
    "vectors": ({}, None, (8,)),
    "images": ({"epsilon": 1e-6}, None, (3, 4, 8)),
    "axis1": ({"axis": 1}, (), (5, 8)),
}


@pytest.mark.parametrize("case", sorted(_LN_CASES))
def test_quantizable_layer_norm_computes_layer_normalization(case):
  # Same weights, same function as Keras's layer, op by op with every hook
  # called once (those of the ops it has) where it normalizes the last axis;
  # over another axis Keras's own computation, which kqreg.quantize does not
  # swap.
  from kqreg.qat import layer_norm  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  arguments, skipped, shape = _LN_CASES[case]
  layer = L.LayerNormalization(
      name="ln", beta_initializer="random_normal",
      gamma_initializer="random_normal", **arguments)
  inputs = tf_keras.Input(shape)
  model = tf_keras.Model(inputs, layer(inputs))
  assert layer_norm.swappable(layer, (None, *shape)) is (case != "axis1")
  swapped = kqreg.qat.rewrites._swap_layers(model, {
      "ln": lambda layer, x: layer_norm.QuantizableLayerNormalization(
          **layer.get_config())})
  copy = swapped.get_layer("ln")
  assert type(copy) is kqreg.qat.QuantizableLayerNormalization
  assert [w.name for w in swapped.weights] == [w.name for w in model.weights]
  calls = []
  for hook in layer_norm.HOOKS:
    setattr(copy, hook, lambda t, hook=hook: calls.append(hook) or t)
  x = np.random.default_rng(0).normal(3.0, 2.0, (4, *shape)).astype(np.float32)
  for training in (False, True):  # rsqrt saturates differently in each
    calls.clear()
    np.testing.assert_allclose(swapped(x, training=training).numpy(),
                               model(x, training=training).numpy(),
                               rtol=1e-5, atol=1e-5)
    expected = [h for h in layer_norm.HOOKS if h not in (skipped or ())]
    assert calls == ([] if skipped == () else expected)


def test_quantizable_layer_norm_keeps_statistics_in_float32_when_mixed():
  # As Keras's layer under mixed_float16: a float16 squared difference of
  # 300 overflows (the output then collapsed to beta).
  x = np.array([[0.0, 300.0, -300.0, 10.0]], np.float32)
  ours = kqreg.qat.QuantizableLayerNormalization(dtype="mixed_float16")(x)
  keras = L.LayerNormalization(dtype="mixed_float16")(x)
  assert ours.dtype == keras.dtype == tf.float16
  np.testing.assert_allclose(ours.numpy(), keras.numpy(), atol=2e-3)
  assert float(tf.reduce_max(tf.abs(ours))) > 1.0


def _normalized_tokens(epsilon=1e-6):
  inputs = tf_keras.Input((6, 8))
  x = L.LayerNormalization(epsilon=epsilon, name="ln")(inputs)
  x = L.GlobalAveragePooling1D(name="gap")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x), name="tokens")


def test_layer_norm_runs_in_int8_in_the_file(tmp_path):
  # With activation bits every tensor between two of the LayerNorm's ops
  # has a range, so the file runs MEAN, SQUARED_DIFFERENCE, RSQRT, SUB, MUL
  # and ADD in int8 and computes Keras's fake-quant graph. A constant token
  # (variance 0: epsilon 1e-6 rounds to 0 on the shifted variance's grid)
  # saturates int8 RSQRT at the top of its range; Keras does the same, with
  # finite ranges and gradients (rsqrt(0) is infinite: the moving average
  # became inf and the outputs NaN). Features vary little (variance ~4e-4),
  # so a range of RSQRT's input that also covers 1 rounds them all to 0 (a
  # guard `where(x > 0, x, 1)` did: the file was ~10 output steps off).
  tf_keras.utils.set_random_seed(0)
  model = _normalized_tokens()
  x = _inputs_for(model, n=64) * 0.05
  x[::4, 2] = 0.025  # every fourth example holds a constant token
  qat = _train_step(_quantize(model, "w8a8"), x)
  wrapper = qat.get_layer("quant_ln")
  assert type(wrapper.layer) is kqreg.qat.QuantizableLayerNormalization
  ranges = {w.name.split("/")[-1].split(":")[0]: w.numpy()
            for w in wrapper.weights}
  assert {"variance_post_activation_max", "inverse_std_post_activation_max",
          "gamma_post_activation_min", "output_max"} <= set(ranges)
  assert all(np.isfinite(v).all() for v in ranges.values()), ranges
  keras_y = qat.predict(x, verbose=0)
  assert np.isfinite(keras_y).all()
  assert export.export_problems(qat) == []
  report = _export(qat, tmp_path, x)
  assert report["float_ops"] == []
  assert {"MEAN", "SQUARED_DIFFERENCE", "RSQRT"} <= set(report["op_counts"])
  # The saturation is the hook's clip of rsqrt(0) = inf, not ops of its own.
  assert not {"GREATER", "SELECT_V2"} & set(report["op_counts"])
  with open(report["path"], "rb") as f:
    info = export.inspect_tflite(f.read())
  tensors = info["tensors"]
  for op in info["ops"]:
    if op["op"] in ("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SUB", "MUL"):
      types = {tensors[i]["type"] for i in op["inputs"] + op["outputs"]
               if i >= 0 and not tensors[i]["constant"]}
      assert types == {"INT8"}, (op["op"], types)
  # The same output grid: LiteRT and Keras differ by whole output steps,
  # mostly not at all (an int8 kernel's rounding, carried on, can flip one).
  dequantize, = [op for op in info["ops"]
                 if op["outputs"] == [info["outputs"][0]]]
  step = float(tensors[dequantize["inputs"][0]]["scale"][0])
  file_y, _ = export.tflite_predict(report["path"], x)
  diff = np.abs(file_y - keras_y) / step
  np.testing.assert_allclose(diff, np.round(diff), atol=0.01)
  assert np.median(diff) == 0 and diff.mean() < 1.0, (diff.mean(), diff.max())
  # A .keras file restores the layer, its ranges and its outputs.
  qat.save(tmp_path / "ln.keras")
  with kqreg.quantize_scope():
    loaded = tf_keras.models.load_model(tmp_path / "ln.keras")
  assert (type(loaded.get_layer("quant_ln").layer) is
          kqreg.qat.QuantizableLayerNormalization)
  np.testing.assert_array_equal(loaded.predict(x, verbose=0), keras_y)


def test_a_layer_norm_before_a_relu_keeps_its_hook_ranges(tmp_path):
  # TFLite fuses the ReLU into the LayerNorm's last ADD: only the layer's
  # output range goes; the ranges between its ops stay, so the file still
  # runs every op in int8 (with all ten dropped it ran them in float).
  from kqreg.qat import layer_norm  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input((6, 8))
  x = L.Dense(8, name="dense")(inputs)
  x = L.ReLU(name="relu")(L.LayerNormalization(name="ln")(x))
  x = L.GlobalAveragePooling1D(name="gap")(x)
  model = tf_keras.Model(inputs, L.Dense(3, name="head")(x))
  x = _inputs_for(model, n=32)
  qat = _train_step(_quantize(model, "w8a8"), x)
  config = qat.get_layer("quant_ln").quantize_config
  assert config.activations == layer_norm.HOOKS
  assert not config.quantize_output
  report = _export(qat, tmp_path, x)
  assert report["float_ops"] == []
  assert "RELU" not in report["op_counts"]  # fused into the ADD


def test_a_fused_output_drops_only_the_output_range():
  # quantize_output=False (the layer feeds an op TFLite fuses into its last
  # one) drops the range of the layer's output and keeps those inside it.
  from kqreg.qat import attention  # pylint: disable=g-import-not-at-top
  dense = kqreg.qat.config_for_layer(L.Dense(2), weight_bits=8,
                                     activation_bits=8, quantize_output=False)
  assert dense.activations == () and not dense.quantize_output
  layer = attention.QuantizableMultiHeadAttention(num_heads=2, key_dim=4)
  tokens = np.zeros((1, 3, 4), np.float32)
  layer(tokens, tokens)  # builds the projections the config looks into
  mha = kqreg.qat.config_for_layer(layer, weight_bits=8, activation_bits=8,
                                   quantize_output=False)
  assert "_output_dense.activation" not in mha.activations
  assert {"_query_dense.activation", "_key_dense.activation",
          "_value_dense.activation", *attention.HOOKS} <= set(mha.activations)
  wrapped = kqreg.qat.config_for_layer(
      L.TimeDistributed(L.Dense(2)), weight_bits=8, activation_bits=8,
      quantize_output=False)
  assert wrapped.activations == ()


def test_layer_norm_ranges_start_at_the_first_batch():
  # Its hooks' values lie far from the initial ±6 (a variance of 0.08 here):
  # the first training batch sets each range (from ±6 the moving average
  # left 5.4), and later batches move it by the usual decay. A short text
  # transformer (40 steps, w8a8, 2026-12-08) reached 0.58 train accuracy
  # from ±6 and 0.85 so, as with Keras's LayerNorm.
  from kqreg.qat import quantizers  # pylint: disable=g-import-not-at-top
  qat = _quantize(_normalized_tokens(), "w8a8")
  wrapper = qat.get_layer("quant_ln")
  assert wrapper.quantize_config.get_config()["hooks_from_first_batch"]

  def variance_max():
    return float(next(w for w in wrapper.weights if w.name.endswith(
        "variance_post_activation_max:0") and "shifted" not in w.name))

  rng = np.random.default_rng(0)
  first, second = (rng.random((8, 6, 8)).astype(np.float32) for _ in "ab")
  qat(first, training=True)
  after_first = variance_max()
  assert 0 < after_first < 0.5  # uniform [0, 1) features: variance ~0.08
  qat(second * 2, training=True)  # variance ~0.33
  decay = quantizers.ACTIVATION_RANGE_DECAY
  batch_max = (variance_max() - decay * after_first) / (1 - decay)
  assert after_first < batch_max < 2.0
  # Other layers' ranges still move from ±6: after two batches the head's
  # is 0.81 * 6 plus 0.19 of its outputs' maxima.
  head = qat.get_layer("quant_head")
  assert not head.quantize_config.get_config().get("hooks_from_first_batch")
  (head_max,) = [float(w) for w in head.weights
                 if w.name.endswith("post_activation_max:0")]
  assert head_max > 0.81 * 6, head_max


@pytest.mark.parametrize("policy", ["w4", "w8a8,LayerNormalization=float"])
def test_layer_norm_without_activation_bits_keeps_keras_layer(policy):
  # Without activation bits there is no range to train: Keras's layer stays.
  qat = _quantize(_normalized_tokens(), policy)
  assert type(qat.get_layer("ln")) is L.LayerNormalization


def test_opted_out_layer_norm_keeps_keras_layer_float_in_the_file(tmp_path):
  # integer_layer_norm=False keeps Keras's layer, its output ranged: the
  # file runs its decomposition in float and export_problems says so.
  problem = _kept_as_keras_layer_and_float_in_the_file(
      _normalized_tokens, "w8a8", {"integer_layer_norm": False}, "ln",
      L.LayerNormalization, {"MEAN", "RSQRT"}, tmp_path)
  assert "float" in problem


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("field", ["integer_attention", "integer_layer_norm"])
def test_classify_config_hands_integer_options_to_quantize(field, flag,
                                                           monkeypatch):
  import types
  from kqreg.classification import task
  seen = {}

  def quantize(model, bits, **kwargs):
    seen.update(kwargs)
    return model
  monkeypatch.setattr(task, "quantize", quantize)
  config = task.ClassifyConfig(model_dir="unused", model="mlp", bits="w4a8",
                               **{field: flag})
  data = types.SimpleNamespace(info=types.SimpleNamespace(
      image_shape=(8, 8, 1), num_classes=3))
  task.ClassificationTask().build(config, data, steps_per_epoch=1)
  assert seen[field] is flag
  assert field in task.ClassifyConfig.IDENTITY
