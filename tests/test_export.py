"""Tests for kqreg.export and the kqreg-export CLI on briefly trained models.

Models train a few epochs on kqreg_digits or sklearn's 8x8 digits (float
first, then 1-2 QAT epochs per policy) so the QAT ranges are real; each model
and export is made once per module and shared. Layer families are exported
from models of a few layers on 8x8 inputs.
"""

import dataclasses
import json
import os
import types
import warnings

import kqreg
import kqreg.data
import kqreg.classification.models
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from kqreg import export

import trainer_process  # tests/trainer_process.py

MODELS = {
    "mlp": dict(hidden=(64,)),
    # The preset's short-run BN momentum (0.8) is for runs of a few hundred
    # steps; these models train 10 float epochs, and the agreement bounds
    # below were measured with the long-run 0.9.
    "cnn": dict(widths=(8, 16), bn_momentum=0.9),
}
FLOAT_EPOCHS = {"mlp": 3, "cnn": 10}
QAT_EPOCHS = {"mlp": 1, "cnn": 2}
TRAIN_EXAMPLES = {"mlp": 1097, "cnn": 1097}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))

  def arrays(split):
    ds, _ = kqreg.data.load("kqreg_digits", split, data_dir=data_dir)
    batches = list(kqreg.data.pipeline(ds, batch_size=512, training=False))
    return (np.concatenate([x.numpy() for x, _ in batches]),
            np.concatenate([y.numpy() for _, y in batches]))

  x_train, y_train = arrays("train")
  x_val, y_val = arrays("validation")
  return {"data_dir": data_dir, "x_train": x_train, "y_train": y_train,
          "x_val": x_val, "y_val": y_val}


def _loss():
  return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def trained(digits):
  """trained(model, policy) -> the QAT model (float for "fp"), cached."""
  cache = {}

  def get(name, policy):
    if (name, policy) in cache:
      return cache[name, policy]
    n = TRAIN_EXAMPLES[name]
    x, y = digits["x_train"][:n], digits["y_train"][:n]
    if (name, "fp") not in cache:
      model = kqreg.classification.models.build(name, (32, 32, 1), 10, seed=0, **MODELS[name])
      model.compile(tf_keras.optimizers.Adam(2e-3), _loss())
      model.fit(x, y, batch_size=32, epochs=FLOAT_EPOCHS[name], verbose=0)
      cache[name, "fp"] = model
    if policy != "fp":
      tf_keras.utils.set_random_seed(1)
      qat = kqreg.quantize(cache[name, "fp"], policy)
      qat.compile(tf_keras.optimizers.Adam(5e-4), _loss())
      qat.fit(x, y, batch_size=32, epochs=QAT_EPOCHS[name], verbose=0)
      cache[name, policy] = qat
    return cache[name, policy]

  return get


@pytest.fixture(scope="module")
def exported(trained, digits, tmp_path_factory):
  """exported(model, policy) -> (qat model, report), cached."""
  out = tmp_path_factory.mktemp("tflite")
  cache = {}

  def get(name, policy):
    if (name, policy) not in cache:
      qat = trained(name, policy)
      # The MLP's input feeds a Flatten, which leaves it without an input
      # quantizer: the converter calibrates that range from these inputs.
      report = export.export_tflite(
          qat, str(out / f"{name}_{policy}.tflite"),
          representative_data=digits["x_train"][:128])
      cache[name, policy] = (qat, report)
    return cache[name, policy]

  return get


def _kernels(report):
  return [row for row in report["weights"] if row["role"] == "weights"]


CASES = [(m, p) for m in ("mlp", "cnn") for p in ("w8a8", "w4a8", "w2a8")]


@pytest.mark.parametrize("name,policy", CASES)
def test_exports_integer_file_that_runs(exported, digits, name, policy):
  qat, report = exported(name, policy)
  bits = int(policy[1])
  assert os.path.getsize(report["path"]) == report["size_bytes"]
  with open(report["path"] + ".json") as f:
    assert json.load(f)["size_bytes"] == report["size_bytes"]
  assert report["float_ops"] == [] and report["float_layers"] == []
  # Graph overhead dominates tiny models: the ratio is far from bits / 32.
  assert report["ratio_to_float"] < 0.6
  kernels = _kernels(report)
  assert len(kernels) == len(kqreg.qat.quantized_weights(qat))
  for row in kernels:
    assert row["bits"] == bits, row
    assert row["type"] == ("INT4" if bits <= 4 else "INT8"), row
    # Narrow range: 2^b - 1 levels, in each channel and over the tensor.
    assert row["levels_per_channel"] <= 2**bits - 1, row
    assert row["levels"] <= 2**bits - 1, row
  check = export.verify_tflite(report["path"], qat, digits["x_val"][:32])
  assert check["examples"] == 32
  assert check["diff_units"] == "output_step"
  assert check["top1_agreement"] >= 0.9
  assert check["latency_ms_per_example"] > 0


def test_stored_weights_are_the_qat_grid(exported):
  # The MLP's head has no BN folded in: stored integers x scale must be the
  # kernel the QAT forward pass multiplies by (checks INT4 unpacking order).
  qat, report = exported("mlp", "w4a8")
  with open(report["path"], "rb") as f:
    info = export.inspect_tflite(f.read())
  head = [c for c in info["constants"]
          if "quant_head/LastValueQuant" in c["name"]][0]
  assert head["type"] == "INT4"
  stored = head["values"].reshape(head["shape"]) * head["scales"][0]
  qw = [q for q in kqreg.qat.quantized_weights(qat)
        if q.layer_name == "head"][0]
  np.testing.assert_allclose(stored, qw.quantized().numpy().T, atol=1e-5)


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_w4_saves_half_the_quantized_weight_bytes(exported, name):
  _, w8 = exported(name, "w8a8")
  _, w4 = exported(name, "w4a8")
  int8_bytes = sum(r["bytes"] for r in _kernels(w8))
  assert int8_bytes == sum(r["elements"] for r in _kernels(w8))
  # INT4 packs two weights per byte; everything else (biases, graph,
  # activation ranges) is the same, so the file shrinks by half the int8
  # kernel bytes, up to flatbuffer padding and names (<= 5% + 256 bytes).
  saved = w8["size_bytes"] - w4["size_bytes"]
  assert abs(saved - int8_bytes / 2) <= 0.05 * int8_bytes / 2 + 256


def _sklearn_digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  data = load_digits()
  x = (data.images[..., None] / 16.0).astype(np.float32)
  return x, data.target.astype(np.int64)


def _tiny_cnn(name="tiny"):
  inputs = tf_keras.Input((8, 8, 1))
  x = tf_keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
  x = tf_keras.layers.MaxPooling2D(name="pool")(x)
  x = tf_keras.layers.Flatten(name="flatten")(x)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(10, name="head")(x),
                        name=name)


def _act_grid(layer):
  """(nudged minimum, step) of the 8-bit activation range a layer holds."""
  found = {}
  for v in layer.weights:
    name = v.name.split("/")[-1].split(":")[0]
    for key in ("min", "max"):
      # Scalar ranges are activations'; kernel ranges are per channel.
      if name.endswith(f"_{key}") and "kernel" not in name:
        found[key] = v
  low, _, step = kqreg.qat.quantizers.nudged_grid(found["min"], found["max"], 8,
                                              False)
  return float(low), float(step)


def _error_bound_in_output_steps(qat, x):
  """Per example and logit, how far LiteRT may be from Keras, in output steps.

  The kernels are stored exactly as Q(w) and the input is quantized by the
  same rule with the same scale, so before the conv's 8-bit rounding both
  hold the same real value up to the int32 bias rounding (half an
  accumulator unit, s_in * s_w / 2) and float32 accumulation error. A conv
  output can therefore differ only where the Keras value lies that close to
  a rounding boundary, and then by one step; max pooling passes at most
  that on. Each such input moves logit j by at most |W_ij| * s_conv, and the
  logit's own rounding adds one step: bound_j = 1 + sum_{i at risk}
  |W_ij| * s_conv / s_out.
  """
  layers = {getattr(l, "layer", l).name: l for l in qat.layers}
  q_in = [l for l in qat.layers if type(l).__name__ == "QuantizeLayer"][0]
  weights = {qw.layer_name: qw for qw in kqreg.qat.quantized_weights(qat)}
  x_q = q_in(x, training=False)
  w_conv = weights["conv"].quantized()
  conv = layers["conv"].layer
  pre = tf_keras.backend.relu(tf_keras.backend.conv2d(x_q, w_conv) +
                              conv.bias).numpy()
  _, s_in = _act_grid(q_in)
  low, s_conv = _act_grid(layers["conv"])
  low_out, s_out = _act_grid(layers["head"])
  del low_out
  s_w = float(np.max(weights["conv"].grid()[2].numpy()))
  slack = 0.5 * s_in * s_w / s_conv + 1e-3  # in conv steps; 1e-3: float32
  position = (pre - low) / s_conv
  at_risk = np.abs(position - np.floor(position) - 0.5) <= slack
  n, h, w, c = at_risk.shape
  pooled = at_risk[:, :h // 2 * 2, :w // 2 * 2].reshape(
      n, h // 2, 2, w // 2, 2, c).any(axis=(2, 4)).reshape(n, -1)
  head = np.abs(weights["head"].quantized().numpy())
  return 1.0 + pooled.astype(np.float64) @ head * s_conv / s_out


@pytest.fixture(scope="module")
def tiny_trained():
  """tiny_trained(policy) -> QAT tiny CNN on sklearn's 8x8 digits, cached
  (one float model, trained once, quantized per policy)."""
  x, y = _sklearn_digits()
  cache = {}

  def get(policy):
    if "fp" not in cache:
      tf_keras.utils.set_random_seed(0)
      model = _tiny_cnn()
      model.compile(tf_keras.optimizers.Adam(1e-2), _loss())
      model.fit(x[:1400], y[:1400], batch_size=64, epochs=4, verbose=0)
      cache["fp"] = model
    if policy not in cache:
      tf_keras.utils.set_random_seed(1)
      qat = kqreg.quantize(cache["fp"], policy)  # a copy: "fp" stays float
      qat.compile(tf_keras.optimizers.Adam(1e-3), _loss())
      qat.fit(x[:1400], y[:1400], batch_size=64, epochs=1, verbose=0)
      cache[policy] = qat
    return cache[policy]

  return get


def _flatbuffer_model(data):
  """The file as the TFLite schema's mutable object tree."""
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=g-import-not-at-top
  return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))


def _without_source_record_and_names(data):
  """The file with the converter's CONVERSION_METADATA (which records what it
  converted from: a Keras model or a concrete function) and the tensors'
  names left out. The signatures, with their input and output names, stay."""
  import flatbuffers  # pylint: disable=g-import-not-at-top
  model = _flatbuffer_model(data)
  for entry in model.metadata:
    if entry.name == b"CONVERSION_METADATA":
      model.buffers[entry.buffer].data = None
  for subgraph in model.subgraphs:
    for tensor in subgraph.tensors:
      tensor.name = None
  builder = flatbuffers.Builder(0)
  builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
  return bytes(builder.Output())


@pytest.mark.parametrize("optimize", [True, False])
def test_conversion_writes_the_file_the_keras_converter_writes(tiny_trained,
                                                               optimize):
  """kqreg converts one frozen inference function, not a SavedModel of every
  layer and variable: the file must still be `from_keras_model`'s, to the
  byte, but for the converter's record of its source and the names of
  tensors (a frozen graph names a variable's value after its read). The
  weights keep the names export matches to layers."""
  from kqreg.export import converter  # pylint: disable=g-import-not-at-top
  qat = tiny_trained("w4a8")
  keras_converter = tf.lite.TFLiteConverter.from_keras_model(qat)
  if optimize:
    keras_converter.optimizations = [tf.lite.Optimize.DEFAULT]
  expected = keras_converter.convert()
  written = converter.convert(qat, optimize=optimize)
  assert written != expected  # the source record differs
  assert (_without_source_record_and_names(written) ==
          _without_source_record_and_names(expected))
  weight_names = [[c["name"] for c in export.inspect_tflite(data)["constants"]
                   if "FakeQuant" in c["name"]] for data in (written, expected)]
  assert weight_names[0] and weight_names[0] == weight_names[1]


def _tensor_contents(data):
  """Each tensor's type, shape, buffer bytes and quantization, sorted."""
  model = _flatbuffer_model(data)
  contents = []
  for tensor in model.subgraphs[0].tensors:
    raw = model.buffers[tensor.buffer].data
    q = tensor.quantization
    contents.append((
        tensor.type, tuple(tensor.shape),
        None if raw is None else bytes(raw),
        None if q is None or q.scale is None else tuple(q.scale),
        None if q is None or q.zeroPoint is None else tuple(q.zeroPoint)))
  return sorted(contents, key=repr)


def test_conversion_of_parallel_branches_matches_the_keras_converter():
  """On a graph of parallel branches the frozen function may order the
  branches' ops differently: the ops, the tensors (weights, shapes,
  quantization) and the outputs must still be `from_keras_model`'s."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  from kqreg.export import converter  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input((8, 8, 1))
  branches = [tf_keras.layers.GlobalAveragePooling2D()(
      tf_keras.layers.Conv2D(4, k, activation="relu", name=f"conv_{k}")(inputs))
              for k in (1, 3, 5)]
  outputs = tf_keras.layers.Dense(3, name="head")(
      tf_keras.layers.Concatenate()(branches))
  qat = kqreg.quantize(tf_keras.Model(inputs, outputs, name="branches"),
                       "w4a8")
  x = np.random.default_rng(0).random((16, 8, 8, 1)).astype(np.float32)
  qat(x, training=True)  # ranges from data, not the initial ones
  keras_converter = tf.lite.TFLiteConverter.from_keras_model(qat)
  keras_converter.optimizations = [tf.lite.Optimize.DEFAULT]
  files = [converter.convert(qat, optimize=True), keras_converter.convert()]
  infos = [export.inspect_tflite(data) for data in files]
  assert infos[0]["op_counts"] == infos[1]["op_counts"]
  assert _tensor_contents(files[0]) == _tensor_contents(files[1])
  results = []
  for data in files:
    runner = Interpreter(model_content=data).get_signature_runner()
    (name,) = runner.get_input_details()
    results.append(runner(**{name: x}))
  assert results[0].keys() == results[1].keys() == {"quant_head"}
  np.testing.assert_array_equal(results[0]["quant_head"],
                                results[1]["quant_head"])


def test_conversion_of_a_model_never_called_says_what_to_do():
  from kqreg.export import converter  # pylint: disable=g-import-not-at-top

  class Subclassed(tf_keras.Model):

    def __init__(self):
      super().__init__(name="subclassed")
      self.dense = tf_keras.layers.Dense(2)

    def call(self, inputs):
      return self.dense(inputs)

  with pytest.raises(export.ExportError, match="'subclassed' has no input "
                     "shape yet: call it on a batch"):
    converter.convert(Subclassed(), optimize=False)


def test_conversion_of_custom_gradient_ops_logs_no_gradient_note(caplog):
  """swish is a custom-gradient op: the converter's SavedModel leaves its
  gradient out (TFLite needs none), and the loader's note on that is muted."""
  from kqreg.export import converter  # pylint: disable=g-import-not-at-top
  inputs = tf_keras.Input((4,))
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(2, "swish")(inputs))
  assert converter.convert(model, optimize=False)
  assert not [r for r in caplog.records if "gradient" in r.getMessage()]


@pytest.mark.parametrize("policy", ["w8a8", "w3a8"])
def test_litert_agrees_with_keras_within_the_derived_bound(tiny_trained,
                                                           tmp_path, policy):
  qat = tiny_trained(policy)
  x, _ = _sklearn_digits()
  x_val = x[1400:1600]
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"), float_reference=False)
  check = export.verify_tflite(report["path"], qat, x_val)
  assert check["diff_units"] == "output_step"
  bound = _error_bound_in_output_steps(qat, x_val)
  keras_out = qat.predict(x_val, verbose=0).astype(np.float64)
  tfl, _ = export.tflite_predict(report["path"], x_val)
  diff = np.abs(tfl - keras_out) / check["output_step"]
  # Worst case per logit: it must hold for every example and logit.
  assert np.all(diff <= bound + 1e-6), (diff.max(), bound.max())
  assert check["max_abs_diff"] <= bound.max() + 1e-6
  # An example whose top-2 margin exceeds the two logits' bounds cannot
  # change its argmax: those must all agree.
  order = np.argsort(keras_out, axis=1)
  rows = np.arange(len(x_val))
  top, second = order[:, -1], order[:, -2]
  margin = (keras_out[rows, top] - keras_out[rows, second]) / check[
      "output_step"]
  clear = margin > bound[rows, top] + bound[rows, second]
  assert clear.mean() >= 0.5, (clear.mean(), bound.mean())
  np.testing.assert_array_equal(tfl[clear].argmax(1),
                                keras_out[clear].argmax(1))


def _file_kernel_as_keras(const, keras_shape):
  """A dequantized file kernel in the Keras layout of `keras_shape`."""
  values = const["values"].reshape(const["shape"]).astype(np.float64)
  scales = np.asarray(const["scales"], np.float64)
  axis = const["quantized_dimension"] or 0
  shape = [1] * values.ndim
  shape[axis] = -1 if scales.size > 1 else 1
  values = values * scales.reshape(shape)
  if len(keras_shape) == 4:  # OHWI -> HWIO
    return np.transpose(values, (1, 2, 3, 0))
  return values.T  # (out, in) -> (in, out)


@pytest.mark.parametrize("weight_only", [False, True])
@pytest.mark.parametrize("bits", range(2, 9))
def test_file_stores_q_of_w_at_every_weight_bit_width(tiny_trained, tmp_path,
                                                      bits, weight_only):
  policy = f"w{bits}" if weight_only else f"w{bits}a8"
  qat = tiny_trained(policy)
  x, _ = _sklearn_digits()
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"),
                                representative_data=x[:64],
                                float_reference=False)
  with open(report["path"], "rb") as f:
    info = export.inspect_tflite(f.read())
  for qw in kqreg.qat.quantized_weights(qat):
    const = [c for c in info["constants"]
             if f"quant_{qw.layer_name}/" in c["name"] and
             c["type"] in ("INT4", "INT8")][0]
    q_of_w = qw.quantized().numpy()
    step = float(np.min(qw.grid()[2].numpy()))
    stored = _file_kernel_as_keras(const, q_of_w.shape)
    # Q(w) itself, to float32 rounding of scale x integer.
    np.testing.assert_allclose(stored, q_of_w, rtol=0, atol=1e-4 * step,
                               err_msg=f"{qw.layer_name} at {bits} bits")
    assert const["type"] == ("INT4" if bits <= 4 and not weight_only
                             else "INT8")
    assert (flatbuffer_levels(const) <= 2**bits - 1), const["name"]
  if bits in (3, 5, 6, 7) and not weight_only:
    # The converter alone stores them off the grid (7 or 127 levels a side).
    assert report["regridded"] and max(report["regridded"].values()) > 0.01


def test_float_reference_only_adds_the_size_ratio(tiny_trained, tmp_path):
  qat = tiny_trained("w4a8")
  with_ref = export.export_tflite(qat, str(tmp_path / "a.tflite"))
  without = export.export_tflite(qat, str(tmp_path / "b.tflite"),
                                 float_reference=False)
  assert with_ref["float_size_bytes"] > with_ref["size_bytes"]
  assert with_ref["ratio_to_float"] == pytest.approx(
      with_ref["size_bytes"] / with_ref["float_size_bytes"])
  assert without["float_size_bytes"] is None and without["ratio_to_float"] is None
  assert "float_reference=False" in without["float_size_note"]
  assert ((tmp_path / "a.tflite").read_bytes() ==
          (tmp_path / "b.tflite").read_bytes())


def test_an_export_reads_the_models_quantized_weights_once(tiny_trained,
                                                           tmp_path,
                                                           monkeypatch):
  # exportable.check_model reads them; re-gridding and the report take its
  # ModelCheck (they each read the model again before).
  from kqreg.qat import introspect  # pylint: disable=g-import-not-at-top
  reads = []
  read = introspect.quantized_weights

  def counted(model):
    reads.append(model.name)
    return read(model)

  monkeypatch.setattr(introspect, "quantized_weights", counted)
  qat = tiny_trained("w4a8")
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"),
                                latency=False)
  assert reads == [qat.name]
  kernels = [w for w in report["weights"] if w["role"] == "weights"]
  assert kernels and all(w["bits"] == 4 and w["layer"] for w in kernels)
  assert report["model"] == qat.name and report["float_layers"] == []


def test_regrid_refuses_a_kernel_off_the_grid_it_assumes(tiny_trained,
                                                         tmp_path):
  # An 8-bit kernel claimed to be 3-bit: its stored values are not within
  # the converter's rounding of a 3-bit grid, so re-gridding must refuse
  # rather than store something else.
  report = export.export_tflite(tiny_trained("w8a8"),
                                str(tmp_path / "m.tflite"),
                                float_reference=False)
  with open(report["path"], "rb") as f:
    data = f.read()
  info = export.inspect_tflite(data)
  head = [c["index"] for c in info["constants"]
          if "quant_head/" in c["name"] and c["type"] == "INT8"][0]
  with pytest.raises(export.ExportError, match="not stored on a grid"):
    export.regrid_weights(data, {head: (3, None)})
  assert export.regrid_weights(data, {head: (8, None)}) == (data, {})


def flatbuffer_levels(const):
  return export.flatbuffer.levels(const)[1]


def _every_family_model():
  inputs = tf_keras.Input((8, 8, 3))
  x = tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                             name="conv")(inputs)
  x = tf_keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2,
                                      name="dw")(x)
  x = tf_keras.layers.SeparableConv2D(8, 3, padding="same",
                                      activation="relu", name="sep")(x)
  x = tf_keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same",
                                      name="tconv")(x)
  x = tf_keras.layers.GlobalAveragePooling2D(name="gap")(x)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="head")(x),
                        name="families")


def _train_briefly(qat, x):
  qat.compile("adam", "mse")
  qat.fit(x, np.zeros((len(x), 3)), epochs=1, verbose=0)
  return qat


# TFLite's TRANSPOSE_CONV takes no INT4 weights, so it stays at 8 bits; and
# per-tensor ranges throughout, because a per-channel Conv2DTranspose does
# not convert (below). BN folding (per channel) is covered by the digits CNN.
@pytest.mark.parametrize("policy", ["w8a8", "w4a8,tconv=w8a8"])
def test_every_layer_family_exports_in_integers(tmp_path, policy):
  tf_keras.utils.set_random_seed(0)
  x = np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)
  qat = _train_briefly(kqreg.quantize(_every_family_model(), policy,
                                      per_channel=False), x)
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"), float_reference=False)
  assert report["float_ops"] == [] and report["float_layers"] == []
  for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV",
             "FULLY_CONNECTED"):
    assert op in report["op_counts"], report["op_counts"]
  kernels = _kernels(report)
  assert {r["layer"] for r in kernels} == {
      "conv", "dw", "sep_depthwise", "sep", "tconv", "head"}
  for row in kernels:
    assert row["type"] == ("INT4" if row["bits"] <= 4 else "INT8"), row
  assert {r["bits"] for r in kernels} == {int(policy[1])} | {8}
  check = export.verify_tflite(report["path"], qat, x)
  assert check["diff_units"] == "output_step"


def _inverted_residual_model():
  """MobileNetV2's block at 8x8: expand, depthwise, project, add."""
  inputs = tf_keras.Input((8, 8, 4))
  x = tf_keras.layers.Conv2D(8, 1, use_bias=False, name="expand")(inputs)
  x = tf_keras.layers.BatchNormalization(name="expand_bn")(x)
  x = tf_keras.layers.ReLU(6.0, name="expand_relu")(x)
  x = tf_keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                      name="depthwise")(x)
  x = tf_keras.layers.BatchNormalization(name="depthwise_bn")(x)
  x = tf_keras.layers.ReLU(6.0, name="depthwise_relu")(x)
  x = tf_keras.layers.Conv2D(4, 1, use_bias=False, name="project")(x)
  x = tf_keras.layers.BatchNormalization(name="project_bn")(x)
  x = tf_keras.layers.Add(name="add")([inputs, x])
  x = tf_keras.layers.GlobalAveragePooling2D(name="gap")(x)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="head")(x),
                        name="inverted_residual")


def test_inverted_residual_block_exports_in_integers(tmp_path):
  # MobileNetV2's ingredients (per-channel kernels with BN folded in, ReLU6,
  # a residual Add) in a few layers instead of MobileNetV2's 150.
  tf_keras.utils.set_random_seed(0)
  x = np.random.default_rng(0).random((16, 8, 8, 4), dtype=np.float32)
  qat = _train_briefly(kqreg.quantize(_inverted_residual_model(), "w4a8"), x)
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"), float_reference=False)
  assert report["float_ops"] == [] and report["float_layers"] == []
  kernels = _kernels(report)
  assert {r["layer"] for r in kernels} == {"expand", "depthwise", "project",
                                           "head"}
  assert all(r["type"] == "INT4" and r["levels_per_channel"] <= 15
             for r in kernels), kernels
  with open(report["path"], "rb") as f:
    info = export.inspect_tflite(f.read())
  _assert_integer_ops(info, kernel_type="INT4")
  weighted = [op["op"] for op in info["ops"] if op["op"] in
              export.flatbuffer.WEIGHTED_OPS]
  assert sorted(weighted) == ["CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D",
                              "FULLY_CONNECTED"]
  check = export.verify_tflite(report["path"], qat, x)
  assert check["diff_units"] == "output_step"  # an int8 output with a scale


_INTEGER_TYPES = {"INT8", "INT4", "INT32"}  # activations, kernels, biases/shapes


def _assert_integer_ops(info, kernel_type):
  """Every op computes on integers: float only enters through QUANTIZE of a
  model input and leaves through DEQUANTIZE to a model output; every
  conv/dense kernel is stored as `kernel_type`, its input int8, its bias
  int32."""
  tensors = info["tensors"]

  def types(indices):
    return [tensors[t]["type"] for t in indices if t >= 0]

  for op in info["ops"]:
    ins, outs = types(op["inputs"]), types(op["outputs"])
    if op["op"] == "QUANTIZE" and ins == ["FLOAT32"]:
      assert op["inputs"][0] in info["inputs"] and outs == ["INT8"], op
    elif op["op"] == "DEQUANTIZE" and outs == ["FLOAT32"]:
      assert op["outputs"][0] in info["outputs"] and ins == ["INT8"], op
    else:
      assert set(ins + outs) <= _INTEGER_TYPES, (op, ins, outs)
    if op["op"] in export.flatbuffer.WEIGHTED_OPS:
      assert ins[0] == "INT8" and ins[1] == kernel_type, (op, ins)
      assert ins[2:] in ([], ["INT32"]), (op, ins)


def _tf_op_model():
  """A model built partly from tf ops (concat, nearest repeats, +), as
  keras-cv builds YOLOv8, with a sigmoid gate and a tanh."""
  inputs = tf_keras.Input((8, 8, 3))
  a = tf_keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
  b = tf_keras.layers.Conv2D(4, 3, padding="same", name="b")(inputs)
  joined = tf.concat([a, b], axis=-1)
  down = tf_keras.layers.Conv2D(8, 3, strides=2, padding="same",
                                name="down")(joined)
  up = tf.repeat(tf.repeat(down, 2, axis=1), 2, axis=2)
  x = up + tf_keras.layers.Conv2D(8, 1, name="skip")(joined)
  gate = tf_keras.layers.Activation("sigmoid", name="gate")(
      tf_keras.layers.Conv2D(8, 1, name="gate_conv")(x))
  squash = tf_keras.layers.Activation("tanh", name="squash")(
      tf_keras.layers.Conv2D(8, 1, name="tanh_conv")(x))
  pooled = tf_keras.layers.GlobalAveragePooling2D(name="gap")(
      tf_keras.layers.Concatenate(name="cat")([gate, squash]))
  return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="head")(pooled))


def test_tf_op_model_exports_integer_with_tflites_fixed_activation_grids(
    tmp_path):
  tf_keras.utils.set_random_seed(0)
  x = np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)
  model = _tf_op_model()
  layered = kqreg.qat.rewrites.tf_ops_as_layers(model)
  # The same function, with concat, repeats and + as Keras layers.
  np.testing.assert_array_equal(layered(x).numpy(), model(x).numpy())
  kinds = [type(l).__name__ for l in layered.layers]
  assert "TFOpLambda" not in kinds
  assert (kinds.count("Concatenate"), kinds.count("Add"),
          kinds.count("UpSampling2D")) == (2, 1, 1)

  qat = kqreg.quantize(layered, "w8a8")
  for name in ("gate", "squash"):
    (quantizer,) = qat.get_layer(f"quant_{name}")._output_quantizers  # pylint: disable=protected-access
    assert isinstance(quantizer, kqreg.qat.FixedRangeQuantizer), name
  qat = _train_briefly(qat, x)
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"), float_reference=False)
  assert report["float_ops"] == [] and report["float_layers"] == []

  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=report["path"])
  ops = {d["op_name"]: d["outputs"] for d in interpreter._get_ops_details()}  # pylint: disable=protected-access
  details = {t["index"]: t for t in interpreter.get_tensor_details()}
  # The grids QAT trained on are the ones TFLite's int8 kernels fix.
  for op, grid in (("LOGISTIC", (1 / 256, -128)), ("TANH", (1 / 128, 0))):
    (output,) = ops[op]
    assert details[output]["dtype"] == np.int8
    assert details[output]["quantization"] == pytest.approx(grid), op
  check = export.verify_tflite(report["path"], qat, x)
  assert check["top1_agreement"] is not None


def test_verify_refuses_a_model_giving_nan(tmp_path):
  # A diverged model's NaN outputs: every argmax is 0, so "top-1 agreement"
  # would read 1.0 against any file.
  model = tf_keras.Sequential([tf_keras.Input((4,)),
                               tf_keras.layers.Dense(3, name="head")])
  qat = kqreg.quantize(model, "w8a8")
  x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
  qat.predict(x, verbose=0)
  path = str(tmp_path / "m.tflite")
  export.export_tflite(qat, path, representative_data=x,
                       float_reference=False, latency=False)
  assert export.verify_tflite(path, qat, x)["top1_agreement"] is not None
  bias = qat.get_layer("quant_head").layer.bias
  bias.assign([np.nan, 0.0, 0.0])
  with pytest.raises(export.ExportError,
                     match=r"the Keras model gives NaN or Inf on 8 of 24"):
    export.verify_tflite(path, qat, x)


def _loads_back_and_exports_in_integers(qat, x, tmp_path):
  """(`qat` loaded back from its `.keras` file, its export report), after
  checking that the loaded model predicts the same and that no op of the
  file is float."""
  path = str(tmp_path / "m.keras")
  qat.save(path)
  with kqreg.quantize_scope():
    loaded = tf_keras.models.load_model(path)
  np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                qat.predict(x, verbose=0))
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"),
                                float_reference=False, latency=False)
  assert report["float_ops"] == [] and report["float_layers"] == []
  return loaded, report


def _hard_swish_model():
  """MobileNetV3's blocks as Keras builds them: hard swish from tf ops on
  numbers, x * relu6(x + 3) * (1/6), and a squeeze-and-excite Multiply."""
  inputs = tf_keras.Input((8, 8, 3))
  x = tf_keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
  gate = tf_keras.layers.ReLU(6.0, name="relu6")(x + 3.0) * (1.0 / 6.0)
  x = tf_keras.layers.Multiply(name="hard_swish")([x, gate])
  x = tf_keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
  squeezed = tf_keras.layers.GlobalAveragePooling2D(keepdims=True,
                                                    name="squeeze")(x)
  excite = tf_keras.layers.Dense(8, activation="sigmoid", name="excite")(
      squeezed)
  x = tf_keras.layers.Multiply(name="se")([x, excite])
  # The other orders and operations, each its own ScalarOp.
  x = 2.0 * (1.0 - (0.5 + (x - 0.25)))
  pooled = tf_keras.layers.GlobalAveragePooling2D(name="gap")(x)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="head")(pooled))


def test_hard_swish_and_squeeze_excite_export_in_integers(tmp_path):
  tf_keras.utils.set_random_seed(0)
  x = np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)
  model = _hard_swish_model()
  layered = kqreg.qat.tf_ops_as_layers(model)
  # The same values, every tf op on a number now a ScalarOp.
  np.testing.assert_array_equal(layered(x).numpy(), model(x).numpy())
  ops = [l.op for l in layered.layers if isinstance(l, kqreg.qat.ScalarOp)]
  assert ops == ["add", "multiply", "subtract", "add", "subtract_from",
                 "multiply"], ops
  assert "TFOpLambda" not in [type(l).__name__ for l in layered.layers]
  # x / c stays a tf op: x * (1 / c) would round differently.
  halved = tf_keras.Model(model.input, model.output / 2.0)
  assert type(kqreg.qat.tf_ops_as_layers(halved).layers[-1]).__name__ == (
      "TFOpLambda")

  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no layer left float
    qat = kqreg.quantize(model, "w4a8")
  ranged = (kqreg.qat.ScalarOp, tf_keras.layers.Multiply)
  wrapped = [l.layer.name for l in qat.layers
             if isinstance(getattr(l, "layer", None), ranged)]
  assert len(wrapped) == 8, wrapped  # 6 ScalarOps, 2 Multiply layers
  qat = _train_briefly(qat, x)
  _, report = _loads_back_and_exports_in_integers(qat, x, tmp_path)
  assert {"ADD", "SUB", "MUL"} <= set(report["op_counts"]), report["op_counts"]
  assert {w["type"] for w in report["weights"]
          if w["role"] == "weights"} == {"INT4"}


def _swish_excite_model():
  """EfficientNet's blocks as Keras builds them: swish activation layers,
  and a squeeze-and-excite whose convs hold their swish and sigmoid."""
  L = tf_keras.layers
  inputs = tf_keras.Input((8, 8, 3))
  x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
  # A name the split would give the reduce conv's activation is taken.
  x = L.Activation("swish", name="reduce_activation")(x)
  squeezed = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
  squeezed = L.Conv2D(2, 1, activation="swish", name="reduce")(squeezed)
  gate = L.Conv2D(8, 1, activation="sigmoid", name="expand")(squeezed)
  x = L.Multiply(name="excite")([x, gate])
  pooled = L.GlobalAveragePooling2D(name="gap")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(pooled))


def test_a_convs_swish_or_sigmoid_becomes_an_activation_layer_in_integers(
    tmp_path):
  """TFLite runs a swish or sigmoid as ops of its own after the conv; a
  conv holding it had no range on its output, so the conv, LOGISTIC and
  MUL ran in float (EfficientNet's squeeze-and-excite)."""
  tf_keras.utils.set_random_seed(0)
  x = np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)
  model = _swish_excite_model()
  the_plan = kqreg.qat.plan(model, "w4a8,reduce=w8a6")
  split = the_plan.model
  for name, activation in (("reduce", "swish"), ("expand", "sigmoid")):
    assert split.get_layer(name).activation.__name__ == "linear"
    split_name = {"reduce": "reduce_activation_"}.get(name,
                                                      f"{name}_activation")
    assert split.get_layer(split_name).activation.__name__ == activation
    # The activation has the bits the policy gave its conv.
    assert the_plan.bits[split_name] == the_plan.bits[name]
  assert str(the_plan.bits["reduce_activation_"]) == "w8a6"
  np.testing.assert_array_equal(split(x).numpy(), model(x).numpy())
  # Weight-only policies leave the conv whole: no range to give it.
  whole = kqreg.qat.plan(model, "w4").model
  assert whole.get_layer("reduce").activation.__name__ == "swish"
  assert "reduce_activation_" not in [l.name for l in whole.layers]

  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no layer left float
    qat = _train_briefly(kqreg.quantize(model, "w4a8"), x)
  # The sigmoid on TFLite's fixed LOGISTIC grid, the convs ranged.
  gate = qat.get_layer("quant_expand_activation")._output_quantizers[0]
  assert type(gate).__name__ == "FixedRangeQuantizer"
  for conv in ("quant_reduce", "quant_expand"):
    assert kqreg.qat.layers.input_range(qat.get_layer(conv).output), conv
  _, report = _loads_back_and_exports_in_integers(qat, x, tmp_path)
  assert {"LOGISTIC", "MUL"} <= set(report["op_counts"]), report["op_counts"]
  assert {w["type"] for w in report["weights"]
          if w["role"] == "weights"} == {"INT4"}


def test_transposed_conv_at_4_bits_or_per_channel_refused(tmp_path):
  x = np.random.default_rng(0).random((8, 8, 8, 3), dtype=np.float32)
  qat = _train_briefly(kqreg.quantize(_every_family_model(), "w4a8",
                                      per_channel=False), x)
  with pytest.raises(export.ExportError,
                     match=r"tconv: 4-bit Conv2DTranspose weights") as refused:
    export.export_tflite(qat, str(tmp_path / "m.tflite"))
  # Its own fix, which works: 8 bits for that layer (or float).
  assert ("(e.g. 'w4a8,tconv=w8a8'), or keep it float ('skip=tconv')"
          in str(refused.value))
  for policy in ("w4a8,tconv=w8a8", "w4a8,skip=tconv"):
    fixed = kqreg.quantize(_every_family_model(), policy, per_channel=False)
    assert not [p for p in export.export_problems(fixed)
                if p.startswith("tconv")], policy
  with pytest.raises(export.ExportError, match="tconv: 4-bit"):
    export.check_exportable(qat)
  with pytest.raises(export.ExportError, match="tconv: per-channel"):
    export.check_exportable(kqreg.quantize(_every_family_model(), "w8a8",
                                           per_channel=True))


def test_transposed_conv_defaults_to_per_tensor_and_exports(tmp_path):
  # TFLite's converter refuses per-channel transposed-conv kernels, so the
  # family table gives Conv2DTranspose one range per tensor.
  inputs = tf_keras.Input((8, 8, 3))
  x = tf_keras.layers.Conv2DTranspose(4, 3, strides=2, name="tconv")(inputs)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="head")(x))
  x = np.random.default_rng(0).random((8, 8, 8, 3), dtype=np.float32)
  qat = _train_briefly(kqreg.quantize(model, "w8a8"), x)
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"), float_reference=False)
  assert report["float_ops"] == []


def test_activations_above_8_bits_refused(tmp_path):
  qat = kqreg.quantize(_tiny_cnn(), "w8a16")
  with pytest.raises(export.ExportError,
                     match=r"above 8 bits in layers .*conv \(16-bit\)"):
    export.export_tflite(qat, str(tmp_path / "m.tflite"))
  assert not os.path.exists(tmp_path / "m.tflite")


@pytest.mark.parametrize("policy, problem", [
    ("w4a8", None), ("w3a8,first=w8a8", None), ("w4", None), ("fp", None),
    ("w4a6", "6-bit activations"), ("w8a16", "16-bit activations"),
    ("w4a8,last=w8a4", "last=w8a4: 4-bit"),
    ("w4a8,conv=a12", "conv=wfpa12: 12-bit")])
def test_check_exportable_before_training(policy, problem):
  if problem is None:
    assert export.check_exportable(policy) is None
    assert export.check_exportable(kqreg.BitPolicy.parse(policy)) is None
    return
  with pytest.raises(export.ExportError, match=problem) as raised:
    export.check_exportable(policy)
  assert len(str(raised.value).splitlines()) == 1


def test_check_exportable_refuses_noise_bits():
  policy = kqreg.BitPolicy.parse("w4a8")
  noisy = types.SimpleNamespace(weight=4, activation=8, noise=True)
  with pytest.raises(export.ExportError, match="noise, not on a grid"):
    export.check_exportable(dataclasses.replace(policy, default=noisy))


def test_check_exportable_on_a_model():
  export.check_exportable(kqreg.quantize(_tiny_cnn(), "w4a8"))
  with pytest.raises(export.ExportError, match="conv: 6-bit"):
    export.check_exportable(kqreg.quantize(_tiny_cnn(), "w4a6"))


def test_int_io(trained, digits, tmp_path):
  qat = trained("cnn", "w8a8")
  report = export.export_tflite(qat, str(tmp_path / "int.tflite"),
                                int_io=True,
                                float_reference=False)
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=report["path"])
  assert interpreter.get_input_details()[0]["dtype"] == np.int8
  assert interpreter.get_output_details()[0]["dtype"] == np.int8
  check = export.verify_tflite(report["path"], qat, digits["x_val"])
  assert check["top1_agreement"] >= 0.98, check


@pytest.mark.parametrize("policy,bits", [("w4a4", 4), ("w8a6", 6)])
def test_low_bit_activations_refused(trained, tmp_path, policy, bits):
  qat = kqreg.quantize(trained("cnn", "fp"), policy)
  with pytest.raises(export.ExportError,
                     match=rf"block1_relu1 \({bits}-bit\).*8-bit activations"):
    export.export_tflite(qat, str(tmp_path / "m.tflite"))
  assert not os.path.exists(tmp_path / "m.tflite")


def test_widening_allowed_reports_it(trained, digits, tmp_path):
  qat = trained("cnn", "w8a6")
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"),
                                allow_activation_widening=True,
                                representative_data=digits["x_val"][:64],
                                float_reference=False)
  assert report["activation_widening"]["block1_relu1"] == 6
  assert "8 bits" in report["activation_widening_note"]
  assert report["widening_mismatch"]["examples"] == 64
  with open(report["report_path"]) as f:
    assert json.load(f)["activation_widening"] == report["activation_widening"]


def test_4bit_activations_fail_to_convert_naming_a_layer(trained, tmp_path):
  qat = kqreg.quantize(trained("cnn", "fp"), "w4a4")
  qat(np.zeros((2, 32, 32, 1), np.float32), training=True)
  with pytest.raises(export.ExportError,
                     match=r"conversion of 'cnn' failed at layer\(s\) block"):
    export.export_tflite(qat, str(tmp_path / "m.tflite"),
                         allow_activation_widening=True)


def test_weight_only_needs_representative_data(trained, digits, tmp_path):
  qat = kqreg.quantize(trained("mlp", "fp"), "w4")
  qat(digits["x_train"][:64], training=True)
  with pytest.raises(export.ExportError, match="representative_data"):
    export.export_tflite(qat, str(tmp_path / "m.tflite"))
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"),
                                representative_data=digits["x_train"][:128],
                                float_reference=False)
  assert report["representative_data_used"] and not report["float_ops"]
  for row in _kernels(report):
    # Re-quantized to INT8 per channel, still on the 4-bit grid per channel.
    assert row["type"] == "INT8" and row["levels_per_channel"] <= 15, row


def test_float_model_refused_unless_allowed(trained, tmp_path):
  model = trained("mlp", "fp")
  with pytest.raises(export.ExportError,
                     match="never quantized.*allow_float=True"):
    export.export_tflite(model, str(tmp_path / "f.tflite"))
  report = export.export_tflite(model, str(tmp_path / "f.tflite"),
                                allow_float=True)
  assert report["float_export"]
  # Float32 storage: 4 bytes per parameter, kernels and biases alike.
  assert {r["type"] for r in report["weights"]} == {"FLOAT32"}
  assert sum(r["bytes"] for r in report["weights"]) == 4 * model.count_params()
  assert report["size_bytes"] >= 4 * model.count_params()


def test_unwritable_paths(trained, tmp_path):
  qat = trained("mlp", "w8a8")
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  for path in (str(blocker / "m.tflite"), str(tmp_path)):
    with pytest.raises(export.ExportError, match="path="):
      export.export_tflite(qat, path)
  # A missing parent folder is created.
  report = export.export_tflite(
      qat, str(tmp_path / "new" / "dir" / "m.tflite"),
      representative_data=np.zeros((8, 32, 32, 1), np.float32),
      float_reference=False)
  assert os.path.isfile(report["path"])


def _cli(*args):
  return trainer_process.run("trainers.export", *args)


def test_cli(trained, digits, tmp_path):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  with kqreg.quantize_scope():
    trained("cnn", "w4a8").save(str(run_dir / "model.keras"))
  (run_dir / "params.json").write_text(json.dumps(
      {"task": "classify",
       "config": {"model_dir": str(run_dir), "dataset": "kqreg_digits",
                  "data_dir": digits["data_dir"]}}))
  result = _cli(f"--model_dir={run_dir}", "--verify_examples=64")
  assert result.returncode == 0, result.stderr
  assert "INT4" in result.stdout and "block1_conv1" in result.stdout
  assert "top-1 agreement" in result.stdout and "ms/example" in result.stdout
  assert os.path.isfile(run_dir / "model.tflite.json")

  missing = _cli(f"--model_dir={tmp_path / 'nope'}")
  assert missing.returncode == 2
  lines = missing.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("kqreg-export: error:")


def _one_op_of_the_file(path, op_name):
  """(interpreter keeping every tensor, the file's one `op_name` op, tensors
  by index)."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():  # "intended for debugging": it is
    warnings.filterwarnings("ignore", "Warning: Enabling `experimental_prese")
    interpreter = Interpreter(model_path=path,
                              experimental_preserve_all_tensors=True)
  interpreter.allocate_tensors()
  ops = interpreter._get_ops_details()  # pylint: disable=protected-access
  (op,) = [o for o in ops if o["op_name"] == op_name]
  return interpreter, op, {t["index"]: t for t in
                           interpreter.get_tensor_details()}


def _file_values(interpreter, tensor, x):
  """`tensor` of the file (dequantized) on input `x`."""
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  scale, zero_point = tensor["quantization"]
  return (interpreter.get_tensor(tensor["index"]).astype(np.float64) -
          zero_point) * scale


def _pooled_dense_block(preactivation=False):
  """A DenseNet transition and the dense layer after it: the pool's output
  feeds a conv (after a BatchNormalization and ReLU, as in DenseNet, with
  `preactivation`) and a Concatenate that joins the two."""
  L = tf_keras.layers
  inputs = tf_keras.Input((8, 8, 3))
  x = L.Conv2D(8, 1, name="transition")(inputs)
  pooled = L.AveragePooling2D(2, name="pool")(x)
  branch = pooled
  if preactivation:
    branch = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(branch))
  branch = L.Conv2D(4, 3, padding="same", activation="relu",
                    name="branch")(branch)
  x = L.Concatenate(name="cat")([pooled, branch])
  x = L.GlobalAveragePooling2D(name="gap")(x)
  return tf_keras.Model(inputs, L.Dense(3, name="head")(x))


def test_average_pooling_stays_on_its_inputs_grid_and_exports_before_a_concat(
    tmp_path):
  """TFLite's int8 AVERAGE_POOL_2D keeps its input's scale; a pool with a
  range of its own did not convert before a Concatenate (DenseNet's
  transitions)."""
  tf_keras.utils.set_random_seed(0)
  x = np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)
  qat = _train_briefly(kqreg.quantize(_pooled_dense_block(), "w4a8"), x)
  transition = qat.get_layer("quant_transition")
  (activation,) = transition._quantize_activations
  quantizer = qat.get_layer("quant_pool")._output_quantizers[0]
  assert type(quantizer).__name__ == "InputRangeQuantizer"
  assert quantizer.source().variables is activation._post_activation_vars
  ranges = {name: [float(v.numpy()) for v in (variables["min_var"],
                                              variables["max_var"])]
            for name, variables in (
                ("transition", activation._post_activation_vars),
                ("pool", qat.get_layer("quant_pool")._output_quantizer_vars))}
  # Its own variables mirror the followed range (a load before the graph
  # is connected needs them).
  np.testing.assert_allclose(ranges["pool"], ranges["transition"], rtol=1e-6)
  low, high, step = (float(t) for t in kqreg.qat.quantizers.nudged_grid(
      *ranges["transition"], 8, False))
  probe = tf_keras.Model(qat.input, [transition.output,
                                     qat.get_layer("quant_pool").output])
  made, pooled = (t.numpy() for t in probe(x))
  for values in (made, pooled):  # both on the transition's grid
    levels = (values - low) / step
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
  assert len(np.unique(pooled)) > 8

  loaded, report = _loads_back_and_exports_in_integers(qat, x, tmp_path)
  follows = loaded.get_layer("quant_pool")._output_quantizers[0].source()
  (loaded_activation,) = loaded.get_layer(
      "quant_transition")._quantize_activations
  assert follows.variables is loaded_activation._post_activation_vars
  interpreter, pool_op, tensors = _one_op_of_the_file(report["path"],
                                                      "AVERAGE_POOL_2D")
  into, out = tensors[pool_op["inputs"][0]], tensors[pool_op["outputs"][0]]
  # The conv's output goes into the pool as it is, no requantize between.
  (maker,) = [o for o in interpreter._get_ops_details()  # pylint: disable=protected-access
              if into["index"] in o["outputs"]]
  assert maker["op_name"] == "CONV_2D"
  assert into["dtype"] == out["dtype"] == np.int8
  assert into["quantization"] == out["quantization"]
  np.testing.assert_allclose(out["quantization"][0], step, rtol=1e-5)
  # The file's pooled values: each within one step of Keras's (the conv's
  # requantization may round a tie the other way).
  file_pooled = _file_values(interpreter, out, x[:1])
  assert np.max(np.abs(file_pooled - pooled[:1])) <= step * (1 + 1e-4)


def test_a_batch_norm_no_conv_folds_into_runs_as_an_int8_depthwise_conv(
    tmp_path):
  """DenseNet's and ResNetV2's pre-activation BatchNormalizations: the
  converter folds none of them, and made float MUL and ADD of each."""
  tf_keras.utils.set_random_seed(0)
  x = np.random.default_rng(0).random((16, 8, 8, 3), dtype=np.float32)
  L = tf_keras.layers
  model = _pooled_dense_block(preactivation=True)
  # A BN the converter folds into the conv before it stays Keras's layer.
  inputs = tf_keras.Input((8, 8, 3))
  folded = tf_keras.Model(inputs, L.BatchNormalization(name="bn")(
      L.Conv2D(4, 1, name="conv")(inputs)))
  assert type(kqreg.qat.plan(folded, "w4a8").model.get_layer("bn")) is (
      L.BatchNormalization)
  # Weight-only policies keep Keras's layer: the file is hybrid anyway.
  assert type(kqreg.qat.plan(model, "w4").model.get_layer("bn")) is (
      L.BatchNormalization)
  swapped = kqreg.qat.plan(model, "w4a8").model
  bn = swapped.get_layer("bn")
  assert type(bn) is kqreg.qat.DepthwiseBatchNormalization
  for a, b in zip(bn.get_weights(), model.get_layer("bn").get_weights()):
    np.testing.assert_array_equal(a, b)
  # Training: Keras's layer, to the bit. Inference: the same affine map,
  # up to float rounding (its scale is on an 8-bit grid that holds it).
  model.get_layer("bn").moving_variance.assign(
      np.linspace(0.5, 2.0, 8, dtype=np.float32))
  bn.set_weights(model.get_layer("bn").get_weights())
  np.testing.assert_array_equal(swapped(x, training=True).numpy(),
                                model(x, training=True).numpy())
  np.testing.assert_allclose(swapped(x, training=False).numpy(),
                             model(x, training=False).numpy(),
                             rtol=1e-5, atol=1e-6)

  qat = _train_briefly(kqreg.quantize(model, "w4a8"), x)
  assert export.export_problems(qat) == []
  loaded, report = _loads_back_and_exports_in_integers(qat, x, tmp_path)
  assert type(loaded.get_layer("quant_bn").layer).__name__ == (
      "DepthwiseBatchNormalization")
  assert "MUL" not in report["op_counts"], report["op_counts"]
  assert report["op_counts"]["DEPTHWISE_CONV_2D"] == 1
  interpreter, depthwise, tensors = _one_op_of_the_file(report["path"],
                                                        "DEPTHWISE_CONV_2D")
  into, kernel, bias = (tensors[i] for i in depthwise["inputs"])
  out = tensors[depthwise["outputs"][0]]
  assert into["dtype"] == kernel["dtype"] == out["dtype"] == np.int8
  assert bias["dtype"] == np.int32
  # One scale per channel, each channel's kernel value at the top level.
  params = kernel["quantization_parameters"]
  assert len(params["scales"]) == 8
  np.testing.assert_array_equal(
      np.abs(interpreter.get_tensor(kernel["index"]).reshape(-1)), 127)
  # The ReLU fused into it: the file's values within one step of Keras's
  # (the requantization may round a tie the other way).
  file_relu = _file_values(interpreter, out, x[:1])
  keras_relu = tf_keras.Model(qat.input, qat.get_layer("quant_relu").output)
  assert np.max(np.abs(file_relu - keras_relu(x[:1]).numpy())) <= (
      out["quantization"][0] * (1 + 1e-4))


def test_a_batch_norm_left_unfolded_is_named_with_its_reason():
  L = tf_keras.layers
  inputs = tf_keras.Input((6,))
  x = L.BatchNormalization(name="after_relu")(
      L.Dense(8, activation="relu", name="d1")(inputs))
  x = L.BatchNormalization(name="folded")(L.Dense(4, name="d2")(x))
  qat = kqreg.quantize(tf_keras.Model(inputs, x), "w4a8")
  assert export.export_problems(qat) == [
      "after_relu: BatchNormalization float: no conv or dense before it to "
      "fold into, so TFLite runs it as MUL and ADD in float (over the "
      "channels of images, kqreg.quantize makes it a "
      "DepthwiseBatchNormalization, an int8 DEPTHWISE_CONV_2D)"]
