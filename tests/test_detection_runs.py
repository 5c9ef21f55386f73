"""kqreg-detect as a program and through the run library: bad flags, VOC on
TFDS mock data, NaN order, multi-worker (split from test_detection.py so the
two test workers can share the detection tests)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kqreg import detection
from kqreg import runs
from kqreg.detection import task as detect_task

import trainer_process  # tests/trainer_process.py



def test_voc_runs_on_mock_data(tmp_path, train_step_traces):
  with tfds.testing.mock_data(num_examples=4):
    ds, info = detection.load_detection("voc/2007", "train")
    assert info.num_classes == 20
    result = runs.run(detect_task.DetectConfig(
        model_dir=str(tmp_path / "voc"), dataset="voc/2007", bits="fp",
        image_size=32, epochs=1, batch_size=4, map_examples=0,
        noise_analysis=False, verbose=0))
  assert np.isfinite(result["val_loss"])
  assert result["train_examples"] == 4
  # The loss accumulators keras-cv's loss creates exist before the first
  # trace, so the train step is traced once, not twice.
  assert len(train_step_traces) == 1, train_step_traces


# Trainer -------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--bits=w9x"],
    ["--image_size=50"],
    ["--bits=w4a4", "--export_tflite"],
])
def test_trainer_bad_flags_exit_with_one_line(args, tmp_path):
  proc = trainer_process.run("trainers.detect", f"--model_dir={tmp_path / 'x'}", *args)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("kqreg-detect: error:"), (
      proc.stderr)
  assert not os.path.exists(tmp_path / "x" / "params.json")


# Run library: NaN order and multi-worker, as for classification ----------

def _tiny_detect_config(model_dir, data_dir, **overrides):
  # Float: what these tests check (NaN order, multi-worker chief) does not
  # depend on the bits, and a float detector skips the quantize pass.
  values = dict(model_dir=str(model_dir), data_dir=data_dir, bits="fp",
                image_size=32, epochs=2, batch_size=4, train_examples=16,
                val_examples=4, map_examples=0, noise_analysis=False,
                augment=False, verbose=0)
  values.update(overrides)
  return detect_task.DetectConfig(**values)


def test_nan_in_a_detection_run_reaches_neither_history_nor_backup(shapes_dir, tmp_path,
                                                                   monkeypatch):
  import tf_keras

  class NaNWeightsAtSecondEpoch(tf_keras.callbacks.Callback):
    """Epoch 0 trains and is backed up; epoch 1's loss is NaN."""

    def on_epoch_begin(self, epoch, logs=None):
      if epoch == 1:
        weight = self.model.trainable_weights[0]
        weight.assign(tf.fill(weight.shape, np.nan))

  monkeypatch.setattr(
      detect_task.DetectionTask, "callbacks",
      lambda self, config, data, pipelines: [NaNWeightsAtSecondEpoch()])
  config = _tiny_detect_config(tmp_path / "run", shapes_dir, epochs=3)
  with pytest.raises(runs.TrainingDiverged) as info:
    runs.run(config)
  assert info.value.epoch == 1
  history = runs.read_history(str(tmp_path / "run" / "history.csv"))
  assert [int(float(row["epoch"])) for row in history] == [0]
  assert all(np.isfinite(float(row["loss"])) for row in history)
  # The backup holds the last good epoch: epoch 0, every weight finite.
  saved = tf.train.latest_checkpoint(str(tmp_path / "run" / "backup" / "chief"))
  assert saved is not None
  reader = tf.train.load_checkpoint(saved)
  names = reader.get_variable_to_shape_map()
  # (The key is "ckpt_saved_epoch/...": the former "_ckpt_saved_epoch"
  # lookup never ran, the backup being empty when epoch 0 already diverged.)
  assert int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) == 0
  values = [reader.get_tensor(k) for k in names if k.startswith("model/") and
            np.issubdtype(np.asarray(reader.get_tensor(k)).dtype, np.floating)]
  assert len(values) > 100 and all(np.all(np.isfinite(v)) for v in values)


def test_multi_worker_detection_on_loopback_chief_writes(shapes_dir, tmp_path):
  import socket
  sockets = [socket.socket() for _ in range(2)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
  for s in sockets:
    s.close()
  model_dir = tmp_path / "run"
  args = [f"--data_dir={shapes_dir}",
          "--bits=fp", "--image_size=32", "--epochs=1", "--batch_size=4",
          "--train_examples=8", "--val_examples=4", "--map_examples=0",
          "--noise_analysis=false", "--noaugment", "--verbose=0",
          "--strategy=multi_worker", f"--model_dir={model_dir}"]
  procs = [trainer_process.TrainerProcess(
      "trainers.detect", *args, env={**os.environ, "TF_CONFIG": json.dumps(
          {"cluster": cluster, "task": {"type": "worker", "index": i}})})
           for i in range(2)]
  for proc in procs:
    proc.wait(timeout=600)
  for proc in procs:
    assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((model_dir / "result.json").read_text())
  assert result["replicas"] == 2 and result["task"] == "detect"
  assert [row["epoch"] for row in result["history"]] == [0.0]
  for name in ("history.csv", "model.keras", "params.json"):
    assert (model_dir / name).exists(), name
  # Only the chief writes: the second worker's scratch folder is elsewhere.
  assert sorted(p.name for p in model_dir.iterdir()) == sorted(
      ["history.csv", "model.keras", "params.json", "result.json", "tensorboard"])
