import importlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import kqreg
from conftest import small_cnn


def _kernels_as_used(qat_model):
  """(layer, quantizer, kernel the forward pass multiplies by)."""
  for layer in qat_model.layers:
    for weight, quantizer, variables in getattr(layer, "_weight_vars", []):
      yield layer, quantizer, quantizer(weight, training=False, weights=variables).numpy()


def _max_levels(quantizer, kernel):
  if not quantizer.per_axis:
    return len(np.unique(kernel))
  channels_last = quantizer.to_channels_last(tf.constant(kernel)).numpy()
  flat = channels_last.reshape(-1, channels_last.shape[-1])
  return max(len(np.unique(flat[:, c])) for c in range(flat.shape[1]))


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", range(2, 9))
def test_kernels_take_at_most_2_to_the_b_minus_1_values(bits, per_channel, cnn, batch):
  qat = kqreg.quantize(cnn, f"w{bits}a8", per_channel=per_channel)
  qat.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  qat.fit(*batch, epochs=1, verbose=0)  # ranges come from a training step
  seen = 0
  for layer, quantizer, kernel in _kernels_as_used(qat):
    assert quantizer.num_bits == bits
    levels = _max_levels(quantizer, kernel)
    # Narrow range: at most 2^b - 1 levels; at least the range's two ends.
    assert 2 <= levels <= 2**bits - 1, (layer.name, levels)
    seen += 1
  assert seen == 3  # conv_a, conv_b, head


class _HalvedWhenPositive(tf_keras.layers.Conv2D):
  """A user's Conv2D whose `call` branches in Python on a tensor."""

  def call(self, inputs):
    outputs = super().call(inputs)
    if tf.reduce_mean(outputs) > 0.0:  # traces only autograph-converted
      outputs = outputs / 2.0
    return outputs


def test_wrappers_autograph_only_what_the_wrapped_layer_needs(monkeypatch):
  inputs = tf_keras.Input((6, 6, 1))
  x = _HalvedWhenPositive(2, 3, name="user_conv")(inputs)
  x = tf_keras.layers.Flatten()(x)
  outputs = tf_keras.layers.Dense(2, name="dense")(x)
  qat = kqreg.quantize(tf_keras.Model(inputs, outputs), "w4a8")
  from tf_keras.src.engine import base_layer
  autograph = base_layer.tf.__internal__.autograph  # what Keras layers call
  converted = []
  convert = autograph.tf_convert

  def spy(fn, ctx, *args, **kwargs):
    converted.append(getattr(getattr(fn, "__self__", None), "name", None))
    return convert(fn, ctx, *args, **kwargs)

  monkeypatch.setattr(autograph, "tf_convert", spy)
  qat.compile("adam", "mse")
  x = np.random.default_rng(0).random((4, 6, 6, 1), dtype=np.float32)
  history = qat.fit(x, np.zeros((4, 2)), verbose=0)
  assert np.isfinite(history.history["loss"][0])
  # The user's layer is converted through its wrapper (tfmot's `call` runs
  # the inner `call` itself); Keras's Dense and the input quantizer are not.
  wrappers = {l.layer.name: l.name for l in qat.layers if hasattr(l, "layer")}
  assert wrappers["user_conv"] in converted
  assert wrappers["dense"] not in converted
  input_quantizers = {l.name for l in qat.layers if type(l).__name__ == "QuantizeLayer"}
  assert input_quantizers and not input_quantizers & set(converted)


def test_every_layer_family_quantizes_and_trains():
  inputs = tf_keras.Input((12, 12, 3))
  x = tf_keras.layers.Conv2D(8, 3, padding="same")(inputs)
  x = tf_keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
  x = tf_keras.layers.SeparableConv2D(8, 3, padding="same")(x)
  x = tf_keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same")(x)
  x = tf_keras.layers.Activation("relu")(x)
  x = tf_keras.layers.AveragePooling2D()(x)
  a = tf_keras.layers.GlobalAveragePooling2D()(x)
  b = tf_keras.layers.GlobalMaxPooling2D()(x)
  x = tf_keras.layers.Concatenate()([a, b])
  outputs = tf_keras.layers.Dense(3)(x)
  qat = kqreg.quantize(tf_keras.Model(inputs, outputs), "w3a8")
  types = {type(l.layer).__name__ for l in qat.layers if hasattr(l, "quantize_config")}
  # SeparableConv2D with activation bits becomes DepthwiseConv2D + Conv2D.
  assert types >= {"Conv2D", "DepthwiseConv2D", "Conv2DTranspose",
                   "Activation", "AveragePooling2D", "GlobalAveragePooling2D",
                   "Concatenate", "Dense"}
  qat.compile("adam", "mse")
  x = np.random.default_rng(0).random((8, 12, 12, 3), dtype=np.float32)
  qat.fit(x, np.zeros((8, 3)), verbose=0)
  for layer, quantizer, kernel in _kernels_as_used(qat):
    assert _max_levels(quantizer, kernel) <= 2**3 - 1, layer.name


def test_average_pooling_follows_its_inputs_range_or_keeps_its_own():
  L = tf_keras.layers
  configs = kqreg.qat.families
  assert configs.config_for_layer(L.AveragePooling2D()).output_on_input_range
  assert configs.config_for_layer(L.AveragePooling1D()).output_on_input_range
  assert not configs.config_for_layer(
      L.GlobalAveragePooling2D()).output_on_input_range
  inputs = tf_keras.Input((4, 4, 2))
  ranged = L.AveragePooling2D(name="ranged")(L.ZeroPadding2D()(inputs))
  # A layer kqreg leaves float gives the pool no range to follow.
  scaled = L.Lambda(lambda t: t * 3.0, name="scale")(inputs)
  unranged = L.AveragePooling2D(name="unranged")(scaled)
  x = L.Concatenate()([L.Flatten()(ranged), L.Flatten()(unranged)])
  model = tf_keras.Model(inputs, L.Dense(2)(x))
  with pytest.warns(UserWarning, match=r"\['scale'\]; they stay float"):
    qat = kqreg.quantize(model, "w4a8")
  # Through the padding, to the input quantizer.
  follows = qat.get_layer("quant_ranged")._output_quantizers[0].source()
  (input_quantizer,) = [l for l in qat.layers
                        if isinstance(l, kqreg.qat.QuantizeLayer)]
  assert follows.variables is input_quantizer.quantizer_vars
  own = qat.get_layer("quant_unranged")
  assert own._output_quantizers[0].source() is None
  qat.compile("sgd", "mse")
  x = np.random.default_rng(0).random((8, 4, 4, 2), dtype=np.float32)
  qat.fit(x, np.zeros((8, 2)), verbose=0)
  # Its own moving-average range, moved off its initial [-6, 6] by the
  # batch ([0, 3)).
  low, high = (float(own._output_quantizer_vars[k]) for k in ("min_var",
                                                                "max_var"))
  assert -6.0 < low <= 0.0 and 3.0 * x.max() <= high < 6.0


def test_gradients_reach_float_weights_and_training_lowers_loss(cnn, batch):
  qat = kqreg.quantize(cnn, "w4a8")
  loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  x, y = batch
  with tf.GradientTape() as tape:
    loss = loss_fn(y, qat(x, training=True))
  kernels = [w for l in qat.layers for w, _, _ in getattr(l, "_weight_vars", [])]
  grads = tape.gradient(loss, kernels)
  assert all(g is not None and float(tf.norm(g)) > 0 for g in grads)
  qat.compile(tf_keras.optimizers.Adam(1e-2), loss_fn)
  history = qat.fit(x, y, epochs=15, verbose=0).history["loss"]
  assert history[-1] < 0.8 * history[0]


def test_weight_only_policy_adds_no_activation_quantizer(cnn):
  qat = kqreg.quantize(cnn, "w4")
  assert not any(isinstance(l, tf_keras.layers.Layer) and type(l).__name__ == "QuantizeLayer"
                 for l in qat.layers)
  for layer in qat.layers:
    if hasattr(layer, "quantize_config"):
      assert not layer.quantize_config.get_output_quantizers(layer.layer)
      assert not layer.quantize_config.get_activations_and_quantizers(layer.layer)
  assert {l.layer.name for l in qat.layers if hasattr(l, "layer")} == {"conv_a", "conv_b", "head"}


def test_activation_quantizer_sits_after_conv_bn_relu_chain(cnn):
  qat = kqreg.quantize(cnn, "w4a8")
  out = {l.layer.name: bool(l.quantize_config.get_output_quantizers(l.layer) or
                            l.quantize_config.get_activations_and_quantizers(l.layer))
         for l in qat.layers if hasattr(l, "quantize_config")}
  assert out["conv_a"] is False and out["bn_a"] is False
  assert out["relu_a"] is True and out["add"] is True and out["conv_b"] is True
  assert any(type(l).__name__ == "QuantizeLayer" for l in qat.layers)


@pytest.mark.parametrize("activation, bn_quantized", [("relu", False), ("relu6", False),
                                                      ("swish", True), ("sigmoid", True)])
def test_bn_before_unfused_activation_keeps_its_range(activation, bn_quantized):
  # TFLite fuses relu/relu6 into the conv; swish and sigmoid are ops of their own
  # whose integer kernels need their input's range (else the converter leaves the
  # whole chain float).
  inputs = tf_keras.Input((8, 8, 3))
  x = tf_keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = tf_keras.layers.BatchNormalization(name="bn")(x)
  x = tf_keras.layers.Activation(activation, name="act")(x)
  outputs = tf_keras.layers.Dense(2, name="head")(tf_keras.layers.Flatten()(x))
  qat = kqreg.quantize(tf_keras.Model(inputs, outputs), "w4a8")
  out = {l.layer.name: bool(l.quantize_config.get_output_quantizers(l.layer))
         for l in qat.layers if hasattr(l, "quantize_config")}
  assert out["conv"] is False
  assert out["bn"] is bn_quantized
  assert out["act"] is True


@pytest.mark.parametrize("filename", ["model.keras", "model.h5", "saved_model"])
def test_save_load_round_trip_predicts_identically(filename, cnn, batch, tmp_path):
  qat = kqreg.quantize(cnn, "w4a8,first=w8a8")
  qat.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  qat.fit(*batch, epochs=2, verbose=0)
  expected = qat.predict(batch[0], verbose=0)
  path = str(tmp_path / filename)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # h5 is "legacy"
    qat.save(path)
  with kqreg.quantize_scope():
    loaded = tf_keras.models.load_model(path)
  np.testing.assert_array_equal(loaded.predict(batch[0], verbose=0), expected)


def test_quantize_scope_reads_a_keras_files_weights_once_from_memory(
    cnn, tmp_path, zip_member_seeks):
  # Keras hands HDF5 the weights as a zip member, and Python 3.11's zipfile
  # serves each backward seek by reading the member again from its start (a
  # detector's run took 38 s to load, 17 s from memory). The values are
  # test_save_load_round_trip_predicts_identically's.
  from tf_keras.src.saving import saving_lib  # pylint: disable=g-import-not-at-top
  stock = saving_lib.H5IOStore
  path = str(tmp_path / "model.keras")
  kqreg.quantize(cnn, "w4a8").save(path)
  with kqreg.quantize_scope():
    tf_keras.models.load_model(path)
  assert "model.weights.h5" not in zip_member_seeks, zip_member_seeks
  assert saving_lib.H5IOStore is stock
  # Scopes that overlap (threads, nesting) may leave in any order: Keras's
  # store is back when the last one leaves, not before.
  first, second = kqreg.quantize_scope(), kqreg.quantize_scope()
  first.__enter__()
  second.__enter__()
  first.__exit__(None, None, None)
  assert saving_lib.H5IOStore is not stock
  second.__exit__(None, None, None)
  assert saving_lib.H5IOStore is stock
  # Keras's own loader, with the same objects, seeks in the member.
  with tf_keras.utils.custom_object_scope(*first.custom_objects):
    tf_keras.models.load_model(path)
  assert "model.weights.h5" in zip_member_seeks


def _nested_backbone_model():
  backbone_in = tf_keras.Input((16, 16, 3))
  x = tf_keras.layers.Conv2D(8, 3, strides=2, padding="same", name="bb_conv1")(backbone_in)
  x = tf_keras.layers.BatchNormalization(name="bb_bn1")(x)
  x = tf_keras.layers.ReLU(name="bb_relu1")(x)
  x = tf_keras.layers.Conv2D(16, 3, strides=2, padding="same", name="bb_conv2")(x)
  backbone = tf_keras.Model(backbone_in, x, name="backbone")
  inputs = tf_keras.Input((16, 16, 3))
  features = backbone(inputs)
  x = tf_keras.layers.GlobalAveragePooling2D(name="gap")(features)
  outputs = tf_keras.layers.Dense(5, name="cls")(x)
  return tf_keras.Model(inputs, outputs, name="detector_like")


def test_nested_functional_backbone_is_flattened_quantized_and_trains(batch):
  model = _nested_backbone_model()
  x = np.random.default_rng(1).random((8, 16, 16, 3), dtype=np.float32)
  float_out = model.predict(x, verbose=0)
  flat = kqreg.qat.flatten_nested(model)
  np.testing.assert_allclose(flat.predict(x, verbose=0), float_out, rtol=1e-5, atol=1e-6)
  qat = kqreg.quantize(model, "w4a8,bb_conv1=w8a8")
  qat.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  qat.fit(x, np.arange(8) % 5, epochs=1, verbose=0)
  rows = {row.name: row for row in kqreg.qat.profile(qat).layers}
  assert rows["quant_bb_conv1"].weight_bits == 8
  assert rows["quant_bb_conv2"].weight_bits == 4
  assert rows["quant_cls"].weight_bits == 4


def test_mobilenetv2_quantizes_and_is_summarized():
  """Training it is tests/test_zoo_learns.py's (300 steps at w4a8)."""
  model = tf_keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                            weights=None, classes=4)
  qat = kqreg.quantize(model, "w4a8")
  lines = []
  prof = kqreg.summary(qat, print_fn=lines.append)
  assert prof.params == model.count_params()
  conv_rows = [l for l in prof.layers if l.layer_type in ("Conv2D", "DepthwiseConv2D")]
  assert len(conv_rows) == 52 and all(l.weight_bits == 4 for l in conv_rows)
  assert 4.0 < prof.compression < 8.0
  assert any("quant_block_16_project" in line for line in lines)
  assert "smaller" in lines[-1]


def test_fp_policy_returns_model_unchanged(cnn):
  assert kqreg.quantize(cnn, "fp") is cnn


def test_policy_matching_nothing_warns_and_keeps_float():
  model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.UnitNormalization(name="ln")])
  with pytest.warns(UserWarning, match="quantizes no layer"):
    assert kqreg.quantize(model, "w4a8") is model


def test_layers_without_family_are_listed_in_a_warning():
  model = tf_keras.Sequential([tf_keras.Input((4,)),
                               tf_keras.layers.Dense(4, name="d"),
                               tf_keras.layers.UnitNormalization(name="ln")])
  with pytest.warns(UserWarning, match=r"no quantization family for layers \['ln'\]"):
    kqreg.quantize(model, "w4a8")


def test_subclassed_model_is_refused_with_advice():
  class Net(tf_keras.Model):
    def __init__(self):
      super().__init__()
      self.dense = tf_keras.layers.Dense(2)

    def call(self, x):
      return self.dense(x)

  net = Net()
  net(np.zeros((1, 3), np.float32))
  with pytest.raises(kqreg.QuantizeError, match="subclassed model.*Sequential or Functional"):
    kqreg.quantize(net, "w4")


def test_unbuilt_model_is_refused():
  with pytest.raises(kqreg.QuantizeError, match="not built"):
    kqreg.quantize(tf_keras.Sequential([tf_keras.layers.Dense(2)]), "w4")


def test_unknown_layer_in_policy_is_refused(cnn):
  with pytest.raises(kqreg.PolicyError, match="layer 'conv_z'"):
    kqreg.quantize(cnn, "w4,conv_z=w8")


def test_import_after_keras3_tensorflow_fails_with_fix():
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  code = "import tensorflow as tf; tf.keras.layers; import kqreg"
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode != 0
  assert "kqreg needs Keras 2 (tf_keras)" in result.stderr
  assert "Import kqreg before tensorflow" in result.stderr

_TFMOT_STATE = (
    "import json, sys\n"
    "from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry\n"
    "print(json.dumps({'keras3': 'keras' in sys.modules,\n"
    "                  'base_layer': repr(prune_registry.base_layer),\n"
    "                  'registry': sorted(c.__name__ for c in\n"
    "                                     prune_registry.PruneRegistry._LAYERS_WEIGHTS_MAP)}))\n")


def _tfmot_state(prelude):
  result = subprocess.run([sys.executable, "-c", prelude + _TFMOT_STATE],
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1"),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_keeps_keras3_out_and_tfmot_as_it_would_be():
  guarded = _tfmot_state("import kqreg\n")
  plain = _tfmot_state("import tensorflow_model_optimization\n")
  assert not guarded.pop("keras3") and plain.pop("keras3")
  # tfmot's pruning registry comes out the same (its base_layer None) either way.
  assert guarded == plain and len(guarded["registry"]) > 10


def test_input_feeding_a_flatten_is_quantized_too():
  model = tf_keras.Sequential([tf_keras.Input((4, 4, 1)), tf_keras.layers.Flatten(),
                               tf_keras.layers.Dense(3)])
  qat = kqreg.quantize(model, "w4a8")
  input_quantizers = [l for l in qat.layers if type(l).__name__ == "QuantizeLayer"]
  assert len(input_quantizers) == 1 and input_quantizers[0].quantizer.num_bits == 8
  assert not any(type(l).__name__ == "QuantizeLayer"
                 for l in kqreg.quantize(model, "w4").layers)


def _separable_model():
  inputs = tf_keras.Input((8, 8, 3))
  x = tf_keras.layers.Conv2D(4, 3, name="conv")(inputs)
  x = tf_keras.layers.SeparableConv2D(6, 3, strides=2, padding="same",
                                      depth_multiplier=2, activation="relu",
                                      name="sep")(x)
  x = tf_keras.layers.GlobalAveragePooling2D(name="gap")(x)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(3, name="head")(x))


def _inner_bits(qat):
  return {l.layer.name: (type(l.layer).__name__, l.quantize_config.weight_bits,
                         l.quantize_config.activation_bits)
          for l in qat.layers if hasattr(l, "quantize_config")}


@pytest.mark.parametrize("policy, sep_bits", [("w4a8,sep=w8a8", (8, 8)),
                                              ("w4a8,SeparableConv2D=w6a8", (6, 8)),
                                              ("w3a8", (3, 8))])
def test_separable_conv_splits_into_quantized_halves(policy, sep_bits):
  tf_keras.utils.set_random_seed(0)
  model = _separable_model()
  x = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
  qat = kqreg.quantize(model, policy)
  bits = _inner_bits(qat)
  # The policy's bits for the separable layer apply to both halves, and the
  # depthwise half quantizes its output (TFLite needs that range).
  assert bits["sep_depthwise"] == ("DepthwiseConv2D",) + sep_bits
  assert bits["sep"] == ("Conv2D",) + sep_bits
  depthwise = [l for l in qat.layers if l.name == "quant_sep_depthwise"][0]
  assert depthwise.quantize_config.get_activations_and_quantizers(depthwise.layer)
  # Same weights, so the float halves compute the float layer.
  quantize_lib = importlib.import_module("kqreg.qat.transform")
  split = quantize_lib._split_separable(model, ["sep"])  # pylint: disable=protected-access
  np.testing.assert_allclose(split(x).numpy(), model(x).numpy(),
                             rtol=1e-5, atol=1e-5)


def test_weight_only_separable_conv_stays_whole():
  qat = kqreg.quantize(_separable_model(), "w4")
  assert _inner_bits(qat)["sep"] == ("SeparableConv2D", 4, None)


def _shared_branch_cnn():
  """small_cnn's layers plus one Dense called on two branches."""
  inputs = tf_keras.Input((8, 8, 1))
  x = tf_keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
  x = tf_keras.layers.BatchNormalization(name="bn")(x)
  x = tf_keras.layers.ReLU(name="relu")(x)
  pooled = [tf_keras.layers.GlobalAveragePooling2D(name="avg")(x),
            tf_keras.layers.GlobalMaxPooling2D(name="max")(x)]
  shared = tf_keras.layers.Dense(4, name="shared")
  outputs = tf_keras.layers.Concatenate(name="cat")([shared(p) for p in pooled])
  return tf_keras.Model(inputs, outputs, name="shared_branch")


def _sequential_mlp():
  return tf_keras.Sequential([tf_keras.Input((8, 8, 1)), tf_keras.layers.Flatten(),
                              tf_keras.layers.Dense(16, activation="relu"),
                              tf_keras.layers.Dense(10)], name="mlp")


def _structure(model):
  from kqreg import _tfmot  # pylint: disable=g-import-not-at-top

  def name(layer):  # QuantizeLayer names come from a process-wide counter
    return "quantize_layer" if type(layer).__name__ == "QuantizeLayer" else layer.name
  # tfmot's layers keep the nodes of its intermediate clones: count the graph's.
  return (type(model).__name__,
          [(type(l).__name__, name(l), len(_tfmot.nodes_in_graph(model, l)))
           for l in model.layers],
          [w.shape for w in model.weights])


@pytest.mark.parametrize("build", [small_cnn, _shared_branch_cnn, _sequential_mlp])
@pytest.mark.parametrize("policy", ["w4a8,first=w8a8", "w3", "n4a8"])
def test_quantize_builds_what_tfmots_quantize_apply_builds(build, policy):
  """One pass over the graph gives tfmot's four-clone `quantize_apply` model."""
  import tensorflow_model_optimization as tfmot  # pylint: disable=g-import-not-at-top
  from kqreg.qat.transform import annotate, plan  # pylint: disable=g-import-not-at-top
  from kqreg.qat.scheme import QuantizeScheme  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  model = build()
  before = [w.copy() for w in model.get_weights()]
  tf_keras.utils.set_random_seed(1)  # the noise twin's seeds come from it
  ours = kqreg.quantize(model, policy)
  tf_keras.utils.set_random_seed(1)
  with kqreg.quantize_scope():
    theirs = tfmot.quantization.keras.quantize_apply(
        annotate(model, policy), scheme=QuantizeScheme(plan(model, policy).input_bits))
  assert _structure(ours) == _structure(theirs)
  configs = [(l.name, l.quantize_config.get_config()) for l in ours.layers
             if hasattr(l, "quantize_config")]
  assert configs and configs == [(l.name, l.quantize_config.get_config())
                                 for l in theirs.layers if hasattr(l, "quantize_config")]
  for a, b in zip(ours.get_weights(), theirs.get_weights()):
    np.testing.assert_array_equal(a, b)
  x = np.random.default_rng(0).random((4, 8, 8, 1), np.float32)
  for training in (True, False):  # a training call also sets the ranges
    np.testing.assert_array_equal(ours(x, training=training), theirs(x, training=training))
  # A step of training moves the copy's weights only.
  ours.compile("sgd", tf_keras.losses.MeanSquaredError())
  ours.fit(x, np.ones((4, ours.output_shape[-1]), np.float32), verbose=0)
  for a, b in zip(model.get_weights(), before):
    np.testing.assert_array_equal(a, b)
