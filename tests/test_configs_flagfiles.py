"""Every flagfile in configs/ parses; the offline ones run (shrunk)."""

import glob
import json
import os

import pytest

import trainer_process  # tests/trainer_process.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg")))
NEEDS_DATA = {"cifar10_resnet20.cfg": "cifar10", "mnist_cnn.cfg": "mnist",
              "voc_yolov8.cfg": "voc/2007"}
DETECTION = {"shapes_yolov8.cfg", "voc_yolov8.cfg", "shapes_sweep.cfg"}


def _run(*args):
  return trainer_process.run("trainers.sweep", "--workers=1", *args)


def test_configs_exist():
  names = {os.path.basename(c) for c in CONFIGS}
  assert {"mnist_sweep.cfg", "digits_sweep.cfg", "cifar10_resnet20.cfg",
          "mnist_cnn.cfg"} | DETECTION <= names


@pytest.mark.parametrize("name, dataset", sorted(NEEDS_DATA.items()))
def test_dataset_configs_parse_and_ask_for_data_dir(name, dataset, tmp_path):
  task = ["--task=detect"] if name in DETECTION else []
  result = _run(f"--flagfile={os.path.join(ROOT, 'configs', name)}", *task,
                f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}")
  assert result.returncode == 2
  assert f"'{dataset}' is not prepared" in result.stderr
  assert "--data_dir" in result.stderr


def test_main_config_runs_shrunk(tmp_path):
  result = _run(f"--flagfile={os.path.join(ROOT, 'configs', 'mnist_sweep.cfg')}",
                "--epochs=2", "--seeds=0,1", "--sweep_bits=fp,n4", "--train_examples=32",
                "--val_examples=64", "--noise_analysis=false", f"--output_dir={tmp_path}")
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "report.md").exists()
  assert "Verdict:" in result.stdout and "n4 vs" not in result.stdout  # no w4 to pair
  result_json = json.loads((tmp_path / "runs" / "n4_seed0" / "result.json").read_text())
  assert result_json["label_noise"]["count"] == round(0.4 * 32)
  assert result_json["dataset"] == "kqreg_mnist"


def test_detect_flagfile_parses_for_a_detection_sweep(tmp_path):
  # Asking for more images than the split has stops before any training.
  result = _run(f"--flagfile={os.path.join(ROOT, 'configs', 'shapes_yolov8.cfg')}",
                "--task=detect", "--sweep_bits=fp", "--seeds=0", "--train_examples=99999",
                f"--output_dir={tmp_path}")
  assert result.returncode == 2
  assert "--train_examples=99999 is larger than the training split of kqreg_shapes" in (
      result.stderr)


@pytest.mark.parametrize("args, message", [
    (["--task=detect", "--model=resnet20"], "--model applies to --task=classify only"),
    (["--task=classify", "--image_size=64"], "--image_size applies to --task=detect only"),
])
def test_sweep_refuses_flags_of_the_other_task(args, message, tmp_path):
  result = _run(*args, f"--output_dir={tmp_path}")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result.stderr
