"""The run library through the classification task: outputs, resume, refusals."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tf_keras

from kqreg.classification import task as classify
from kqreg import runs
from kqreg.data import DatasetError


def _config(tmp_path, **overrides):
  values = dict(model_dir=str(tmp_path / "run"), dataset="kqreg_digits",
                model="cnn", model_kwargs={"widths": (8, 16)}, bits="w4a8",
                epochs=2, batch_size=32, train_examples=64, verbose=0)
  values.update(overrides)
  return classify.ClassifyConfig(**values)


def _history(model_dir):
  with open(os.path.join(model_dir, "history.csv"), newline="") as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize("dataset", ["kqreg_digits", "kqreg_textures"])
def test_run_writes_every_output_on_offline_datasets(dataset, tmp_path):
  result = runs.run(_config(tmp_path, dataset=dataset))
  run_dir = tmp_path / "run"
  for name in ("params.json", "history.csv", "noise.csv", "noise.jsonl",
               "model.keras", "result.json"):
    assert (run_dir / name).exists(), name
  assert os.listdir(run_dir / "tensorboard")
  assert [row["epoch"] for row in _history(run_dir)] == ["0", "1"]
  for key in ("train_accuracy", "val_accuracy", "test_accuracy", "train_loss",
              "val_loss", "gap_accuracy", "gap_loss", "params", "wall_time_s"):
    assert key in result, key
  assert result["gap_accuracy"] == pytest.approx(
      result["train_accuracy"] - result["val_accuracy"])
  assert result["train_examples"] == 64 and result["task"] == "classify"
  assert result["noise"]["delta_std"] > 0
  assert json.loads((run_dir / "result.json").read_text()) == result
  params = json.loads((run_dir / "params.json").read_text())
  assert params["task"] == "classify" and params["config"]["bits"] == "w4a8"


def test_the_train_step_is_traced_once(tmp_path, train_step_traces):
  # Variables created in a trace make tf.function trace again: `run` creates
  # the optimizer's slots and the loss and metric accumulators beforehand.
  result = runs.run(_config(tmp_path, epochs=2, noise_analysis=False))
  assert len(train_step_traces) == 1, train_step_traces
  assert np.isfinite(result["val_loss"])


def test_bits_are_parsed_once_into_a_policy(tmp_path):
  from kqreg.qat.policy import BitPolicy
  config = _config(tmp_path, bits="w4a8,first=w8")
  assert isinstance(config.bits, BitPolicy)
  assert config.identity()["bits"] == "w4a8,first=w8"


def test_finished_run_is_not_trained_again(tmp_path):
  first = runs.run(_config(tmp_path, bits="w4"))
  again = runs.run(_config(tmp_path, bits="w4"))
  assert again["skipped"] and again["wall_time_s"] == first["wall_time_s"]


def test_model_dir_of_other_settings_is_refused(tmp_path):
  runs.run(_config(tmp_path, bits="w4"))
  with pytest.raises(runs.ConfigError, match=r"--bits='w4' there, 'w8' now"):
    runs.run(_config(tmp_path, bits="w8"))
  with pytest.raises(runs.ConfigError, match=r"--freeze_ranges_after=None there, 1 now"):
    runs.run(_config(tmp_path, bits="w4", freeze_ranges_after=1))


def test_refused_run_leaves_model_dir_usable(tmp_path):
  with pytest.raises(DatasetError):
    runs.run(_config(tmp_path, dataset="cifar10", data_dir=str(tmp_path / "none")))
  assert not (tmp_path / "run" / "params.json").exists()
  result = runs.run(_config(tmp_path, bits="fp", epochs=1))
  assert not result.get("skipped") and not result["resumed"]
  assert result["dataset"] == "kqreg_digits" and len(_history(tmp_path / "run")) == 1


def test_model_dir_that_cannot_be_created_is_one_config_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(runs.ConfigError, match=r"--model_dir=.* cannot be created"):
    runs.run(_config(tmp_path, model_dir=str(blocker / "run")))


@pytest.mark.parametrize("overrides, flag", [
    ({"epochs": 0}, "--epochs"),
    ({"batch_size": -1}, "--batch_size"),
    ({"optimizer": "lion"}, "--optimizer: unknown optimizer 'lion'"),
    ({"lr_schedule": "linear"}, "--lr_schedule"),
    ({"strategy": "gpu"}, "--strategy"),
    ({"model": "vgg16"}, "--model: unknown model 'vgg16'"),
    ({"bits": "w4,conv="}, "--bits: Bad policy token"),
    ({"train_examples": 100000}, "--train_examples=100000 is larger than the training split"),
    ({"learning_rate": 0.0}, "--learning_rate"),
    ({"label_noise": 1.0}, "--label_noise"),
    ({"model_kwargs": {"no_such_arg": 1}}, "--model_args: .*no_such_arg"),
    ({"bits": "w4a4", "export_tflite": True}, "--export_tflite with --bits=w4a4"),
    ({"freeze_ranges_after": 0}, "--freeze_ranges_after"),
])
def test_bad_settings_name_the_flag(overrides, flag, tmp_path):
  with pytest.raises(runs.ConfigError, match=flag):
    runs.run(_config(tmp_path, **overrides))
  assert not (tmp_path / "run" / "params.json").exists()


def test_real_dataset_path_runs_on_tfds_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    result = runs.run(_config(tmp_path, dataset="cifar10", bits="w4", epochs=1,
                              train_examples=None, noise_analysis=False))
  # mock_data yields num_examples for any split string, "train[:90%]" too.
  assert result["train_examples"] == 40
  assert {"val_accuracy", "test_accuracy"} <= set(result)
  # cifar10 has no validation split: the last tenth of train, by the one rule
  # that export uses too.
  assert result["val_split"] == "train[90%:]"


def test_validation_is_the_same_split_for_training_and_export(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    result = runs.run(_config(tmp_path, dataset="cifar10", bits="w8a8", epochs=1,
                              train_examples=None, noise_analysis=False,
                              export_tflite=True))
  assert result["tflite"]["split"] == result["val_split"] == "train[90%:]"


def _labels_and_images(ds):
  pairs = list(ds.as_numpy_iterator())
  return (np.concatenate([y for _, y in pairs]),
          np.concatenate([x for x, _ in pairs]))


def test_label_noise_is_recorded_and_reaches_training_labels_only(tmp_path, monkeypatch):
  from kqreg.data import label_noise
  # The datasets the run trains and validates on, as the run builds them.
  seen = []
  datasets = classify.ClassificationTask.datasets

  def keep(self, config, data):
    out = datasets(self, config, data)
    seen.append(out)
    return out

  monkeypatch.setattr(classify.ClassificationTask, "datasets", keep)
  result = runs.run(_config(tmp_path, bits="fp", label_noise=0.25, epochs=1,
                            noise_analysis=False))
  record = result["label_noise"]
  assert record["count"] == 16 and record["examples"] == 64
  assert record["fraction"] == 0.25
  # The clean datasets of the same config, from a run without noise.
  runs.run(_config(tmp_path, bits="fp", epochs=1, noise_analysis=False,
                   model_dir=str(tmp_path / "clean")))
  (noisy, clean) = seen
  noisy_y, noisy_x = _labels_and_images(noisy["train_eval"])
  clean_y, clean_x = _labels_and_images(clean["train_eval"])
  np.testing.assert_array_equal(noisy_x, clean_x)  # the same 64 images, in order
  changed = np.flatnonzero(noisy_y != clean_y)
  # Exactly round(0.25 * 64) labels changed, each to another class: the
  # positions and labels `corrupt_labels` gives for the run's seed.
  assert len(changed) == 16 == round(0.25 * len(clean_y))
  expected, expected_record = label_noise.corrupt_labels(clean_y, 0.25, 10, seed=0)
  np.testing.assert_array_equal(noisy_y, expected)
  assert record == expected_record
  assert record["indices_sha256"] == label_noise.indices_sha256(changed)
  # Training batches (shuffled) carry the noisy labels: the same classes counted.
  train_y, _ = _labels_and_images(noisy["train"].take(2))
  assert np.array_equal(np.bincount(train_y, minlength=10),
                        np.bincount(noisy_y, minlength=10))
  # Validation untouched: the same images and labels as without noise.
  for a, b in zip(_labels_and_images(noisy["val"]), _labels_and_images(clean["val"])):
    np.testing.assert_array_equal(a, b)
  # A second run with the same seed flips the same examples.
  again = runs.run(_config(tmp_path, bits="fp", label_noise=0.25, epochs=1,
                           noise_analysis=False, model_dir=str(tmp_path / "again")))
  assert again["label_noise"] == record


@pytest.mark.parametrize("optimizer, schedule, optimizer_class, lr_class", [
    ("sgd", "cosine", "SGD", "CosineDecay"),
    ("adamw", "step", "AdamW", "PiecewiseConstantDecay"),
    ("rmsprop", "constant", "RMSprop", None)])
def test_optimizers_and_schedules_are_built_and_train(optimizer, schedule,
                                                      optimizer_class, lr_class,
                                                      tmp_path):
  config = _config(tmp_path, optimizer=optimizer, lr_schedule=schedule,
                   weight_decay=1e-4, bits="w4").validate()
  data = classify.TASK.load(config)
  model = classify.TASK.build(config, data, steps_per_epoch=2)
  assert type(model.optimizer).__name__ == optimizer_class
  lr = model.optimizer._learning_rate  # pylint: disable=protected-access
  assert (type(lr).__name__ == lr_class) if lr_class else not hasattr(lr, "get_config")
  x, y = next(iter(classify.TASK.datasets(config, data)["train"]))
  kernels = [w for w in model.trainable_weights if "kernel" in w.name]
  before = [w.numpy().copy() for w in kernels]
  model.train_on_batch(x, y)
  assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, kernels))
  tf_keras.backend.clear_session()


def test_nan_loss_stops_with_epoch_and_step_and_records_noise(tmp_path):
  config = _config(tmp_path, optimizer="sgd", learning_rate=1e12, bits="w8",
                   epochs=3, model="mlp", model_kwargs={"hidden": (32,)})
  with pytest.raises(runs.TrainingDiverged, match=r"loss became nan at epoch \d+, step \d+"):
    runs.run(config)
  assert not (tmp_path / "run" / "result.json").exists()
  records = [json.loads(l) for l in open(tmp_path / "run" / "noise.jsonl")]
  assert "nan_step" in records[-1]["logs"]


def test_callback_order_puts_the_nan_stop_first(tmp_path):
  from kqreg.runs.callbacks import (CheckedBackupAndRestore, EpochCSVLogger,
                                    StopOnNaN, callbacks_in_order)
  from kqreg.noise.callback import NoiseAnalysisCallback
  noise = NoiseAnalysisCallback(str(tmp_path))
  extra = tf_keras.callbacks.Callback()
  order = [type(c) for c in callbacks_in_order(
      out_dir=str(tmp_path), backup_dir=str(tmp_path / "b"),
      task_callbacks=[extra], noise_callback=noise)]
  assert order[:5] == [StopOnNaN, tf_keras.callbacks.Callback,
                       NoiseAnalysisCallback, EpochCSVLogger,
                       CheckedBackupAndRestore]


def test_load_run_restores_task_config_and_model(tmp_path):
  result = runs.run(_config(tmp_path, bits="w4", epochs=1, noise_analysis=False))
  task, config, model = runs.load_run(str(tmp_path / "run"))
  assert task is classify.TASK and str(config.bits) == "w4"
  assert config.identity() == _config(tmp_path, bits="w4", epochs=1,
                                      noise_analysis=False).identity()
  data = task.load(config)
  val = classify.TASK.datasets(config, data)["val"]
  loss = model.evaluate(val, verbose=0, return_dict=True)["loss"]
  assert loss == pytest.approx(result["val_loss"], rel=1e-5)


def test_a_runs_model_reads_its_weights_once_from_memory(tmp_path,
                                                         zip_member_seeks):
  # load_run (kqreg-export, kqreg-sensitivity) and --init_from load inside
  # kqreg.quantize_scope, which reads model.keras's weights from memory
  # (test_quantize.py: Keras's own loader seeks in them).
  import kqreg  # pylint: disable=g-import-not-at-top
  from kqreg.runs import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  from conftest import small_cnn  # pylint: disable=g-import-not-at-top
  model = kqreg.quantize(small_cnn(), "w4a8")
  model(np.ones((2, 8, 8, 1), np.float32), training=True)  # ranges move
  model.save(str(tmp_path / "model.keras"))
  loaded = model_dir_lib._load_model(str(tmp_path))  # pylint: disable=protected-access
  assert "model.weights.h5" not in zip_member_seeks, zip_member_seeks
  for a, b in zip(model.weights, loaded.weights, strict=True):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)


@pytest.mark.parametrize("field,before", [("integer_attention", True),
                                          ("integer_layer_norm", False)])
def test_a_run_written_before_an_identity_field_reads_as_it_trained(
    field, before, tmp_path):
  # integer_attention and integer_layer_norm joined the identity after runs
  # were written. With activation bits their params.json reads as what they
  # trained (attention swapped, LayerNorm Keras's); without, either matches.
  from kqreg.runs import model_dir as model_dir_lib
  (tmp_path / "result.json").write_text(json.dumps({"val_loss": 1.0}))
  for bits in ("w4a8", "w4"):
    for now in (True, False):
      config = classify.ClassifyConfig(model_dir=str(tmp_path), bits=bits,
                                       **{field: now})
      identity = config.identity()
      old = {k: v for k, v in identity.items() if k != field}
      (tmp_path / "params.json").write_text(json.dumps({"identity": old}))
      if bits == "w4" or now == before:
        assert model_dir_lib.finished_result(config)["skipped"]
      else:
        with pytest.raises(runs.ConfigError,
                           match=f"--{field}={before} there, {now} now"):
          model_dir_lib.finished_result(config)
  with pytest.raises(runs.ConfigError, match=field):
    model_dir_lib.check_model_dir(str(tmp_path), identity)  # no fallback


def test_load_run_refuses_a_folder_without_task(tmp_path):
  (tmp_path / "params.json").write_text(json.dumps({"identity": {}}))
  with pytest.raises(runs.ConfigError, match="names no task"):
    runs.load_run(str(tmp_path))


@pytest.mark.parametrize("error, refused", [
    (IndexError("Read less bytes than requested"), True),  # truncated .data
    (ValueError("Received incompatible tensor with shape (3,)"), True),
    (IndexError("list index out of range"), False),  # a bug, not bad input
    (KeyError("x"), False),
])
def test_checkpoint_errors_are_refused_only_when_they_mean_a_bad_checkpoint(
    error, refused, tmp_path, monkeypatch):
  from kqreg.runs.callbacks import CheckedBackupAndRestore

  def _raise(self, logs=None):
    raise error

  monkeypatch.setattr(tf_keras.callbacks.BackupAndRestore, "on_train_begin", _raise)
  callback = CheckedBackupAndRestore(str(tmp_path / "backup"))
  expected = runs.CheckpointError if refused else type(error)
  with pytest.raises(expected):
    callback.on_train_begin()
