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
                "--epochs=2", "--seeds=0,1", "--sweep_bits=fp,fp+weight_decay=0.5",
                "--train_examples=32", "--val_examples=64", "--noise_analysis=false",
                f"--output_dir={tmp_path}")
  assert result.returncode == 0, result.stderr
  report = (tmp_path / "report.md").read_text()
  assert "Verdict:" in result.stdout
  # The flagfile's declared margins reach the report, and the control is read.
  assert "Equivalence margins (declared before the run): val acc ±0.02, final val loss ±0.05" in (
      report)
  assert "Positive control fp+weight_decay=0.5 vs fp" in report
  control = tmp_path / "runs" / "fp_weight_decay_0_5_seed0"
  assert json.loads((control / "params.json").read_text())["identity"]["weight_decay"] == 0.5
  result_json = json.loads((control / "result.json").read_text())
  assert "label_noise" not in result_json  # clean labels
  assert result_json["dataset"] == "kqreg_mnist" and result_json["train_examples"] == 32


def _flag_values(path):
  """A flagfile's `--name=value` lines as a dict (comments skipped)."""
  values = {}
  with open(path) as f:
    for line in f:
      name, sep, value = line.strip().partition("=")
      if name.startswith("--") and sep:
        values[name[2:]] = value
  return values


def _text(path):
  with open(path) as f:
    return f.read()


# The flagfiles that say they were pre-registered (the other sweeps' seeds
# may overlap: they are not confirmations).
PREREGISTERED = [c for c in CONFIGS if "pre-registered" in _text(c).lower()]


def test_preregistered_studies_parse_and_no_two_share_a_seed():
  """Each pre-registered study's arms, margins and seeds are valid, and its
  seeds are fresh: no two pre-registered studies share a seed, and none
  uses an exploration seed (100-104)."""
  from kqreg.study.sweep import decision
  from kqreg.study.sweep.records import TASKS
  from kqreg_trainers.sweep import arm_settings, parse_seeds, parse_sweep_bits
  assert {"mnist_sweep.cfg", "mnist_sweep_paired.cfg", "mnist_vit_sweep_paired.cfg",
          "mnist_clean_sweep_paired.cfg"} <= {os.path.basename(c) for c in PREREGISTERED}
  exploration = set(range(100, 105))  # the studies' exploration seeds
  owner = {}
  for path in PREREGISTERED:
    values = _flag_values(path)
    flag = "arms" if "arms" in values else "sweep_bits"
    for arm in parse_sweep_bits(values[flag], flag):
      arm_settings("classify", arm, flag)
    if "* Equivalence margins:" in _text(path):  # declared: the flag must be there
      assert "equivalence_margins" in values, path
    decision.parse_margins(values.get("equivalence_margins"),
                           [key for key, _ in TASKS["classify"].compared])
    for seed in parse_seeds(values["seeds"].split(",")):
      assert seed not in exploration, (path, seed)
      assert seed not in owner, (path, seed, owner.get(seed))
      owner[seed] = path


# What each exported w4a8 file runs in float, and what it runs in integers
# (kqreg.qat.LAYER_FAMILIES): the LSTM cell in float; the ViT's attention,
# MLP and LayerNorms in int8. The cnn1d's integer Conv1D export is
# tested in test_layer_families.py and its training in test_zoo_learns.py:
# its flagfile is only parsed here.
_SEQUENCE_CONFIGS = {
    "mnist_lstm.cfg": ({"FULLY_CONNECTED", "LOGISTIC", "TANH"}, set()),
    "mnist_vit.cfg": (set(), {"BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED",
                              "MEAN", "SQUARED_DIFFERENCE", "RSQRT"}),
}


def test_cnn1d_config_parses_and_names_the_model(tmp_path):
  result = _run(f"--flagfile={os.path.join(ROOT, 'configs', 'mnist_cnn1d.cfg')}",
                "--model_args={'widths': 'x'}", f"--output_dir={tmp_path}")
  assert result.returncode == 2
  assert "cnn1d widths=('x',)" in result.stderr, result.stderr


@pytest.mark.parametrize("name", sorted(_SEQUENCE_CONFIGS))
def test_sequence_and_attention_configs_run_shrunk_and_export(name, tmp_path):
  result = _run(f"--flagfile={os.path.join(ROOT, 'configs', name)}",
                "--epochs=1", "--sweep_bits=w4a8", "--train_examples=32",
                "--val_examples=32", "--noise_analysis=false",
                f"--output_dir={tmp_path}")
  assert result.returncode == 0, result.stderr
  run = json.loads((tmp_path / "runs" / "w4a8_seed0" / "result.json").read_text())
  tflite = run["tflite"]
  assert tflite["keras_accuracy"] is not None and tflite["tflite_accuracy"] is not None
  assert "INT4" in tflite["weight_types"]  # at least the Dense head
  in_float, in_integers = _SEQUENCE_CONFIGS[name]
  assert in_float <= set(tflite["float_ops"])
  assert not in_integers & set(tflite["float_ops"])
  if not in_float:  # integers throughout
    assert tflite["float_ops"] == []


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


def test_every_flag_default_is_its_config_field_default():
  """One source of defaults: the config dataclasses (kqreg.runs.config.option)."""
  import dataclasses
  from absl import flags
  from kqreg.runs.config import default_of, help_of
  from kqreg_trainers import app
  from kqreg_trainers import flags as kqreg_flags
  kqreg_flags.define_flags("run", "classify", "detect")  # as kqreg-sweep does
  for task in ("classify", "detect"):
    config_class = kqreg_flags.config_class(task)
    names = [n for g in ("run", task) for n in kqreg_flags.DEFINED[g]]
    fields = {kqreg_flags.FIELD_OF.get(n, n) for n in names}
    assert fields == {f.name for f in dataclasses.fields(config_class)} - {"model_dir"}, task
    defaults = {n: flags.FLAGS[n].default for n in names}
    built = config_class(model_dir="x", **app.config_values(task, defaults))
    expected = config_class(model_dir="x")
    for field in fields:
      assert getattr(built, field) == getattr(expected, field), (task, field)
      assert help_of(config_class, field), (task, field)
    for name in names:  # a flag default other than None is the field's own
      if flags.FLAGS[name].default is not None and name not in ("per_channel", "bits"):
        field = kqreg_flags.FIELD_OF.get(name, name)
        assert flags.FLAGS[name].default == default_of(config_class, field), name
  # Defaults that differ between the tasks: None in the sweep, each task's in help.
  assert flags.FLAGS["epochs"].default is None
  assert "classify 30, detect 10" in flags.FLAGS["epochs"].help


@pytest.mark.parametrize("module, default", [("trainers.classify", "30"),
                                             ("trainers.detect", "10")])
def test_a_task_trainer_shows_its_task_defaults(module, default):
  result = trainer_process.run(module, "--help")
  assert result.returncode in (0, 1), result.stderr  # absl's --help exits 1
  text = " ".join(result.stdout.split())
  assert f"--epochs: Training epochs. (default: '{default}')" in text, text[:3000]
