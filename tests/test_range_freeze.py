"""Freezing activation ranges: what stops, what stays the same, and resume."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tf_keras

import kqreg
from kqreg.classification import task as classify
from kqreg import runs


def _model(bits="w8a8"):
  tf_keras.utils.set_random_seed(0)
  float_model = tf_keras.Sequential([
      tf_keras.Input((6,)), tf_keras.layers.Dense(16, activation="relu"),
      tf_keras.layers.Dense(3)])
  model = kqreg.quantize(float_model, bits)
  model.compile(tf_keras.optimizers.Adam(1e-2),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def _data():
  rng = np.random.default_rng(0)
  return (rng.normal(size=(64, 6)).astype(np.float32) * 3,
          rng.integers(0, 3, 64))


def _ranges(model):
  """The activation ranges (input, activations, outputs), not the kernels',
  by position: a second model of the same layers has other layer names."""
  return {i: v.numpy().copy() for i, v in enumerate(
      v for v in model.non_trainable_weights
      if re.search(r"_(min|max):0$", v.name) and "kernel" not in v.name)}


class _RangesPerEpoch(tf_keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.ranges, self.kernels = [], []

  def on_epoch_end(self, epoch, logs=None):
    self.ranges.append(_ranges(self.model))
    self.kernels.append([w.numpy().copy() for w in self.model.trainable_weights])


def _fit(model, *callbacks, epochs=3):
  x, y = _data()
  record = _RangesPerEpoch()
  model.fit(x, y, epochs=epochs, batch_size=16, shuffle=False, verbose=0,
            callbacks=[*callbacks, record])
  return record


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_ranges_stop_at_the_freeze_while_the_weights_train():
  model = _model()
  record = _fit(model, kqreg.qat.FreezeActivationRanges(1))
  first, *frozen = record.ranges
  assert len(first) == 6  # the input's, the hidden ReLU's, the logits' min and max
  assert all(_equal(first, later) for later in frozen)
  for before, after in zip(record.kernels[1:], record.kernels[2:]):
    assert any(not np.array_equal(b, a) for b, a in zip(before, after))
  # Without the freeze the same epochs keep moving the ranges.
  moving = _fit(_model()).ranges
  assert not _equal(moving[1], moving[2])


def test_a_frozen_training_step_quantizes_as_inference_does():
  model = _model()
  _fit(model, kqreg.qat.FreezeActivationRanges(1), epochs=2)
  x, _ = _data()
  # No dropout or batch norm: training and inference differ only in the
  # range update, which the freeze removed.
  np.testing.assert_array_equal(model(x, training=True).numpy(),
                                model(x, training=False).numpy())
  assert kqreg.qat.freeze_activation_ranges(model, False) == 3
  ranges = _ranges(model)
  model(x, training=True)
  assert not _equal(ranges, _ranges(model))


def test_epochs_before_the_freeze_train_as_without_it():
  with_callback = _fit(_model(), kqreg.qat.FreezeActivationRanges(3))
  without = _fit(_model())
  for a, b in zip(with_callback.ranges, without.ranges):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
  for a, b in zip(with_callback.kernels[-1], without.kernels[-1]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_model_without_activation_quantizers_warns_by_name():
  model = _model("w4")
  with pytest.warns(UserWarning, match=f"model '{model.name}' has no moving-average"):
    _fit(model, kqreg.qat.FreezeActivationRanges(1), epochs=1)


@pytest.mark.parametrize("after", [0, -1, 1.5, True])
def test_after_epochs_must_be_a_positive_integer(after):
  with pytest.raises(ValueError, match="after_epochs"):
    kqreg.qat.FreezeActivationRanges(after)


def test_a_run_resumed_past_the_freeze_keeps_the_frozen_ranges(tmp_path, monkeypatch):
  config = dict(model_dir=str(tmp_path / "run"), dataset="kqreg_digits", model="cnn",
                model_kwargs={"widths": (8, 16)}, bits="w8a8", epochs=3, batch_size=32,
                train_examples=64, verbose=0, noise_analysis=False,
                freeze_ranges_after=1)
  original = kqreg.qat.FreezeActivationRanges.on_epoch_begin
  at_interrupt = {}

  def interrupt_before_the_last_epoch(self, epoch, logs=None):
    if epoch == 2 and not at_interrupt:
      at_interrupt.update(_ranges(self.model))
      raise KeyboardInterrupt("test")
    original(self, epoch, logs)

  monkeypatch.setattr(kqreg.qat.FreezeActivationRanges, "on_epoch_begin",
                      interrupt_before_the_last_epoch)
  with pytest.raises(runs.TrainingInterrupted, match="after 2 of 3 epochs"):
    runs.run(classify.ClassifyConfig(**config))
  result = runs.run(classify.ClassifyConfig(**config))
  assert result["resumed"] and len(result["history"]) == 3
  _, _, trained = runs.load_run(config["model_dir"])
  assert len(at_interrupt) > 4 and _equal(at_interrupt, _ranges(trained))


def test_a_fit_that_starts_before_the_freeze_unfreezes_first():
  model = _model()
  _fit(model, kqreg.qat.FreezeActivationRanges(1), epochs=2)  # left frozen
  again = _fit(model, kqreg.qat.FreezeActivationRanges(5), epochs=2)
  assert not _equal(again.ranges[0], again.ranges[1])


_MIRRORED = """
import json, re
import numpy as np
import kqreg
from kqreg import runs
from kqreg.classification import task as classify

def ranges(model):  # each replica's copy of every activation range
  return [[float(np.ravel(c.numpy())[0]) for c in getattr(v, "values", (v,))]
          for v in model.non_trainable_weights
          if re.search(r"_(min|max):0$", v.name) and "kernel" not in v.name]

seen = dict()
Freeze = kqreg.qat.FreezeActivationRanges
begin, end = Freeze.on_train_begin, Freeze.on_epoch_end

def on_train_begin(self, logs=None):
  seen["initial"] = ranges(self.model)
  seen["replicas"] = self.model.distribute_strategy.num_replicas_in_sync
  begin(self, logs)

def on_epoch_end(self, epoch, logs=None):
  seen.setdefault("epochs", []).append(ranges(self.model))
  seen.setdefault("kernels", []).append(
      float(sum(np.abs(w.numpy()).sum() for w in self.model.trainable_weights)))
  end(self, logs)

Freeze.on_train_begin, Freeze.on_epoch_end = on_train_begin, on_epoch_end
runs.run(classify.ClassifyConfig(
    model_dir={model_dir!r}, dataset="kqreg_digits", model="mlp",
    model_kwargs={{"hidden": (16,)}}, bits="w4a8", epochs=4, batch_size=32,
    train_examples=128, verbose=0, noise_analysis=False, strategy="mirrored",
    virtual_cpus=2, freeze_ranges_after=2))
print(json.dumps(seen))
"""


def test_mirrored_ranges_train_then_stay_frozen(tmp_path):
  """Under MirroredStrategy on two virtual CPUs (a fresh process: the CPU
  split must precede TensorFlow's runtime): the activation ranges move in
  each epoch before the freeze, alike on both replicas, and not after it,
  while the weights train on."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
      [sys.executable, "-c", _MIRRORED.format(model_dir=str(tmp_path / "run"))],
      env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3"), cwd=root,
      capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  seen = json.loads(done.stdout.strip().splitlines()[-1])
  assert seen["replicas"] == 2
  initial, epochs = np.array(seen["initial"]), np.array(seen["epochs"])
  assert len(epochs) == 4 and initial.shape[0] >= 4  # >= 2 ranges, min and max
  # Mirrored: both replicas hold the same range after every epoch.
  assert all(np.array_equal(e[:, 0], e[:, 1]) for e in epochs)
  # Trained: every range left its initial value, and moved again in epoch 1.
  assert np.all(epochs[0][:, 0] != initial[:, 0]), (initial, epochs[0])
  assert not np.array_equal(epochs[0], epochs[1])
  # Frozen from epoch 2 on: the ranges of epoch 1's end, to the bit.
  for frozen in epochs[2:]:
    np.testing.assert_array_equal(frozen, epochs[1])
  kernels = seen["kernels"]
  assert kernels[2] != kernels[1] and kernels[3] != kernels[2]  # weights train on
