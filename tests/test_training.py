import csv
import json
import os

import pytest
import tensorflow_datasets as tfds

from kqreg import training
from kqreg.data import DatasetError


def _config(tmp_path, **overrides):
  values = dict(model_dir=str(tmp_path / "run"), dataset="kqreg_digits",
                model="cnn", model_kwargs={"widths": (8, 16)}, bits="w4a8",
                epochs=2, batch_size=32, train_examples=64, verbose=0)
  values.update(overrides)
  return training.TrainConfig(**values)


def _history(model_dir):
  with open(os.path.join(model_dir, "history.csv"), newline="") as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize("dataset", ["kqreg_digits", "kqreg_textures"])
def test_run_writes_every_output_on_offline_datasets(dataset, tmp_path):
  result = training.run(_config(tmp_path, dataset=dataset))
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
  assert result["train_examples"] == 64
  assert result["noise"]["delta_std"] > 0
  assert json.loads((run_dir / "result.json").read_text()) == result


def test_finished_run_is_not_trained_again(tmp_path):
  first = training.run(_config(tmp_path, bits="w4"))
  again = training.run(_config(tmp_path, bits="w4"))
  assert again["skipped"] and again["wall_time_s"] == first["wall_time_s"]


def test_model_dir_of_other_settings_is_refused(tmp_path):
  training.run(_config(tmp_path, bits="w4"))
  with pytest.raises(training.ConfigError, match=r"--bits='w4' there, 'w8' now"):
    training.run(_config(tmp_path, bits="w8"))


def test_refused_run_leaves_model_dir_usable(tmp_path):
  with pytest.raises(DatasetError):
    training.run(_config(tmp_path, dataset="cifar10", data_dir=str(tmp_path / "none")))
  assert training.run(_config(tmp_path, bits="fp"))["val_accuracy"] >= 0


@pytest.mark.parametrize("overrides, flag", [
    ({"epochs": 0}, "--epochs"),
    ({"batch_size": -1}, "--batch_size"),
    ({"optimizer": "lion"}, "--optimizer: unknown optimizer 'lion'"),
    ({"lr_schedule": "linear"}, "--lr_schedule"),
    ({"strategy": "gpu"}, "--strategy"),
    ({"model": "vit"}, "--model: unknown model 'vit'"),
    ({"bits": "w4,conv="}, "--bits: Bad policy token"),
    ({"train_examples": 100000}, "--train_examples=100000 is larger than the training split"),
    ({"learning_rate": 0.0}, "--learning_rate"),
])
def test_bad_settings_name_the_flag(overrides, flag, tmp_path):
  with pytest.raises(training.ConfigError, match=flag):
    training.run(_config(tmp_path, **overrides))


def test_real_dataset_path_runs_on_tfds_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    result = training.run(_config(tmp_path, dataset="cifar10", bits="w4", epochs=1,
                                  train_examples=None, noise_analysis=False))
  # mock_data yields num_examples for any split string, "train[:90%]" too.
  assert result["train_examples"] == 40
  assert {"val_accuracy", "test_accuracy"} <= set(result)


def test_dataset_without_validation_split_holds_out_a_tenth_of_train(tmp_path):
  train, val, test, info = training._load_splits(_config(tmp_path, dataset="kqreg_digits"))
  assert training.count_examples(val) == info.splits["validation"]  # has its own split
  with tfds.testing.mock_data(num_examples=40):
    train, val, test, _ = training._load_splits(_config(tmp_path, dataset="mnist"))
  assert test is not None


@pytest.mark.parametrize("optimizer, schedule", [("sgd", "cosine"), ("adamw", "step"),
                                                 ("rmsprop", "constant")])
def test_optimizers_and_schedules_train(optimizer, schedule, tmp_path):
  result = training.run(_config(tmp_path, optimizer=optimizer, lr_schedule=schedule,
                                weight_decay=1e-4, bits="w4", augment=True,
                                noise_analysis=False))
  assert result["train_loss"] > 0


def test_nan_loss_stops_with_epoch_and_step_and_records_noise(tmp_path):
  config = _config(tmp_path, optimizer="sgd", learning_rate=1e12, bits="w8",
                   epochs=3, model="mlp", model_kwargs={"hidden": (32,)})
  with pytest.raises(training.TrainingDiverged, match=r"loss became nan at epoch \d+, step \d+"):
    training.run(config)
  assert not (tmp_path / "run" / "result.json").exists()
  records = [json.loads(l) for l in open(tmp_path / "run" / "noise.jsonl")]
  assert "nan_step" in records[-1]["logs"]
