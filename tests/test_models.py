"""Tests for kqreg.classification.models: presets, builders, describe() and quantizability."""

import re

import numpy as np
import pytest
import tf_keras

import kqreg
from kqreg.classification import models
from kqreg.classification.models import registry

SHAPE, CLASSES = (32, 32, 3), 10


@pytest.fixture(scope="module")
def built():
  """Every preset built once at 32x32x3 / 10 classes (resnet50 is slow)."""
  return {name: models.build(name, SHAPE, CLASSES, seed=0)
          for name in models.MODELS}


def _weighted(model, layer_type):
  return [l for l in model.layers if type(l) is layer_type]


def test_presets_are_plain_dicts_with_expected_names():
  assert list(models.MODELS) == ["mlp", "cnn", "resnet20", "mobilenetv2",
                                 "resnet50", "cnn1d", "lstm", "gru", "vit"]
  for preset in models.MODELS.values():
    assert set(preset) == {"builder", "description", "kwargs"}
    assert isinstance(preset["kwargs"], dict)


@pytest.mark.parametrize("name", list(models.MODELS))
def test_builds_functional_model_with_logits(built, name):
  model = built[name]
  assert isinstance(model, tf_keras.Model)
  # Functional (a graph network), neither Sequential nor subclassed.
  assert model._is_graph_network
  assert not isinstance(model, tf_keras.Sequential)
  names = [l.name for l in model.layers]
  assert len(names) == len(set(names))
  assert not any(isinstance(l, tf_keras.Model) for l in model.layers)  # flat
  x = np.random.default_rng(0).random((2, *SHAPE), dtype=np.float32)
  logits = model(x, training=False).numpy()
  assert logits.shape == (2, CLASSES)
  # Logits, not probabilities: rows need not be a distribution.
  assert not np.allclose(logits.sum(axis=1), 1.0, atol=1e-3)
  assert model.layers[-1].get_config().get("activation") in (None, "linear")


def test_describe_reports_measured_param_counts_documented_by_builders(built):
  table = models.describe()
  for name, model in built.items():
    count = f"{model.count_params():,}"
    line = next(l for l in table.splitlines() if l.startswith(name + " "))
    assert re.search(rf"\s{re.escape(count)}$", line), (name, line)
    assert models.MODELS[name]["description"] in line
    # The builder's docstring states the same number.
    assert count in registry._builder(name).__doc__, name


def test_resnet20_structure(built):
  model = built["resnet20"]
  convs = _weighted(model, tf_keras.layers.Conv2D)
  main = [c for c in convs if "shortcut" not in c.name]
  shortcuts = [c for c in convs if "shortcut" in c.name]
  dense = _weighted(model, tf_keras.layers.Dense)
  assert len(main) == 19 and len(dense) == 1  # 20 weighted layers
  assert [c.kernel_size for c in shortcuts] == [(1, 1), (1, 1)]
  assert [c.filters for c in shortcuts] == [32, 64]
  assert [c.strides for c in shortcuts] == [(2, 2), (2, 2)]
  assert sorted({c.filters for c in main}) == [16, 32, 64]
  assert len(_weighted(model, tf_keras.layers.Add)) == 9
  assert len(_weighted(model, tf_keras.layers.BatchNormalization)) == 21
  assert model.get_layer("stage3_block3_out").output_shape == (None, 8, 8, 64)
  assert model.get_layer("head").units == CLASSES


def test_resnet_depth_override_and_validation():
  assert len(_weighted(models.build("resnet20", SHAPE, CLASSES, depth=8),
                       tf_keras.layers.Add)) == 3
  for depth in (19, 21, 2, 0):
    with pytest.raises(ValueError, match=rf"depth={depth}.*6n\+2"):
      models.build("resnet20", SHAPE, CLASSES, depth=depth)


def test_cnn_overrides(built):
  model = models.build("cnn", SHAPE, CLASSES, widths=(8, 16),
                       convs_per_stage=1, dropout=0.5, batch_norm=False)
  convs = _weighted(model, tf_keras.layers.Conv2D)
  assert [c.filters for c in convs] == [8, 16]
  assert all(c.use_bias for c in convs)
  assert not _weighted(model, tf_keras.layers.BatchNormalization)
  assert model.get_layer("dropout").rate == 0.5
  assert model.count_params() < built["cnn"].count_params()
  default = _weighted(built["cnn"], tf_keras.layers.Conv2D)
  assert [c.filters for c in default] == [32, 32, 64, 64, 128, 128]
  assert not any(c.use_bias for c in default)
  assert models.MODELS["cnn"]["kwargs"]["widths"] == (32, 64, 128)  # intact


def test_unknown_override_key_is_rejected():
  with pytest.raises(ValueError, match="wdiths.*allowed: widths"):
    models.build("cnn", SHAPE, CLASSES, wdiths=(8,))


def test_unknown_name_lists_available_models():
  with pytest.raises(models.UnknownModelError) as info:
    models.build("vgg16", SHAPE, CLASSES)
  assert isinstance(info.value, ValueError)
  for name in ["vgg16", *models.MODELS]:
    assert name in str(info.value)


def test_bad_shape_and_classes_are_rejected():
  with pytest.raises(ValueError, match="input_shape"):
    models.build("mlp", (32, 32), CLASSES)
  with pytest.raises(ValueError, match="num_classes"):
    models.build("mlp", SHAPE, 0)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20", "mobilenetv2",
                                  "lstm", "vit"])
def test_seed_makes_initial_weights_identical(name):
  a = models.build(name, SHAPE, CLASSES, seed=3).get_weights()
  b = models.build(name, SHAPE, CLASSES, seed=3).get_weights()
  c = models.build(name, SHAPE, CLASSES, seed=4).get_weights()
  assert len(a) == len(b)
  assert all(np.array_equal(u, v) for u, v in zip(a, b))
  assert not all(np.array_equal(u, v) for u, v in zip(a, c))


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20", "cnn1d", "gru",
                                  "vit"])
def test_accepts_one_channel(name):
  model = models.build(name, (32, 32, 1), CLASSES)
  assert model(np.zeros((2, 32, 32, 1), np.float32)).shape == (2, CLASSES)


def test_sequence_models_read_rows_and_patches():
  # Sequential MNIST: one time step per image row.
  for name in ("cnn1d", "lstm", "gru"):
    model = models.build(name, (28, 28, 1), CLASSES)
    assert model.get_layer("rows").output_shape == (None, 28, 28), name
  lstm, gru = models.build("lstm", SHAPE, 2), models.build("gru", SHAPE, 2)
  assert isinstance(lstm.get_layer("rnn"), tf_keras.layers.LSTM)
  assert isinstance(gru.get_layer("rnn"), tf_keras.layers.GRU)
  assert lstm.get_layer("rnn").unroll  # converts to TFLite (LAYER_FAMILIES)
  vit = models.build("vit", (28, 28, 1), CLASSES)
  assert vit.get_layer("tokens").output_shape == (None, 49, 64)  # 7x7 patches
  assert len(_weighted(vit, tf_keras.layers.MultiHeadAttention)) == 2
  assert len(_weighted(vit, tf_keras.layers.LayerNormalization)) == 5
  with pytest.raises(ValueError, match="patch_size=5: must divide"):
    models.build("vit", (28, 28, 1), CLASSES, patch_size=5)
  with pytest.raises(ValueError, match="dim=30: must be a multiple"):
    models.build("vit", SHAPE, CLASSES, dim=30)
  with pytest.raises(ValueError, match="cell='rnn'"):
    models.build("lstm", SHAPE, CLASSES, cell="rnn")


def test_applications_adapt_small_grayscale_inputs():
  model = models.build("mobilenetv2", (28, 28, 1), 5)
  assert model.get_layer("adapter_conv").filters == 3
  assert model.get_layer("adapter_resize").output_shape == (None, 32, 32, 3)
  assert model(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 5)
  plain = models.build("mobilenetv2", SHAPE, 5)
  assert not any(l.name.startswith("adapter") for l in plain.layers)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
def test_quantizes_w4a8_and_trains_one_step(name):
  model = models.build(name, SHAPE, CLASSES, seed=0)
  qat = kqreg.quantize(model, "w4a8")
  assert kqreg.qat.is_quantized(qat)
  qat.compile(tf_keras.optimizers.SGD(0.01),
              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  x = rng.random((8, *SHAPE), dtype=np.float32)
  y = rng.integers(0, CLASSES, 8)
  # Trainable weights only: quantizer ranges and BN statistics change in a
  # forward pass even when the optimizer does nothing.
  before = [w.numpy().copy() for w in qat.trainable_weights]
  loss = qat.train_on_batch(x, y)
  assert np.isfinite(loss)
  after = [w.numpy() for w in qat.trainable_weights]
  kernels = [i for i, w in enumerate(qat.trainable_weights) if "kernel" in w.name]
  assert kernels and all(not np.array_equal(before[i], after[i]) for i in kernels)
  assert qat.predict(x, verbose=0).shape == (8, CLASSES)


def test_mobilenetv2_preset_uses_bn_momentum_0_9():
  # Keras' 0.999 leaves a short run's moving statistics near their initial
  # values: evaluation then predicts one class.
  model = models.build("mobilenetv2", SHAPE, 5)
  momenta = {l.momentum for l in model.layers
             if isinstance(l, tf_keras.layers.BatchNormalization)}
  assert momenta == {0.9}
