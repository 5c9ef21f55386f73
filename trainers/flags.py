"""Every flag of the kqreg trainers, defined here and nowhere else.

Each entry point calls `quiet_import()` and then `define_flags(groups...)`,
which returns the `FlagHolder`s of the groups it defined (absl's typed
handles: `holders.bits.value`). Groups: "model_dir", "run" (what
classification and detection runs share), "classify", "detect", "sweep",
"export", "benchmark", "sensitivity".
All flags are optional, so tests need none; each entry point marks its
required ones.

Override order: defaults here < a `--flagfile` (absl's own) < flags on the
command line, later ones winning. `--bits` is parsed once, by its flag
parser, into a `kqreg.BitPolicy`; a malformed policy fails flag parsing with
one line.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import sys
import types
from typing import Callable, Dict

from absl import flags

FLAGS = flags.FLAGS

# Exit statuses: 2 bad input, 3 training diverged, 130 interrupted (as
# shells report SIGINT).
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def quiet_import() -> None:
  """Imports kqreg (so TensorFlow) with the C library's stderr muted.

  TensorFlow 2.21 prints INFO lines from C++ at import and at device setup
  that no environment variable silences; a trainer's stderr is for its own
  messages. Python errors still surface: they are raised after stderr is
  back. Called by each entry point's `main`, never at import.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import kqreg  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


class _PolicyParser(flags.ArgumentParser):
  """Parses `--bits` into a `kqreg.BitPolicy` or an auto policy.

  Errors quote the token.
  """

  syntactic_help = ("a bit policy such as w4a8 or 'w4,first=w8,last=w8', or "
                    "auto:<budget>")

  def parse(self, argument):
    from kqreg import auto_bits  # pylint: disable=g-import-not-at-top
    from kqreg.policy import PolicyError  # pylint: disable=g-import-not-at-top
    try:
      return auto_bits.parse(argument)
    except PolicyError as e:
      raise ValueError(str(e)) from e

  def flag_type(self):
    return "bit policy"


class _PolicySerializer(flags.ArgumentSerializer):

  def serialize(self, value):
    return str(value)


def _model_args(text: str) -> dict:
  """Parses --model_args with `ast.literal_eval` (never eval)."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise flags.ValidationError(
        f"{text!r} is not a Python literal ({e}); write e.g. "
        "\"{'widths': (16, 32, 64)}\"") from e
  if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
    raise flags.ValidationError(
        f"{text!r} must be a dict with string keys, e.g. \"{{'dropout': 0.1}}\"")
  return value


class _ModelArgsParser(flags.ArgumentParser):

  def parse(self, argument):
    if isinstance(argument, dict):
      return argument
    try:
      return _model_args(argument)
    except flags.ValidationError as e:
      raise ValueError(str(e)) from e


def _define_run() -> Dict[str, flags.FlagHolder]:
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  h = {}
  h["dataset"] = flags.DEFINE_string(
      "dataset", None,
      "TFDS dataset prepared in --data_dir, or an offline one. "
      "Classification (default kqreg_digits): mnist, fashion_mnist, cifar10, "
      "..., offline kqreg_mnist, kqreg_digits, kqreg_textures. Detection "
      "(default kqreg_shapes): voc/2007, voc/2012, coco/2017, offline "
      "kqreg_digit_scenes, kqreg_shapes.")
  h["data_dir"] = flags.DEFINE_string(
      "data_dir", None, "TFDS data dir holding prepared real datasets.")
  h["bits"] = flags.DEFINE(
      _PolicyParser(), "bits", "fp",
      "Bit policy: fp, w8, w4 (weight-only), w4a8, n4 (the noise-only twin "
      "of w4), 'w4,first=w8,last=w8', 'w4a8,conv2d_3=w2,Dense=w8', ...; "
      "or auto:<budget>[:<base>] to choose bits per layer from measured "
      "noise under a budget: mean weight bits (auto:4.0), a fraction of "
      "float32 size (auto:0.15x) or weight bytes (auto:120KiB); the base "
      "policy (default w8a8) gives activation bits, first/last pins and skips, "
      "e.g. auto:3.5:w8a8,first=w8a8.",
      serializer=_PolicySerializer())
  h["per_channel"] = flags.DEFINE_enum(
      "per_channel", "auto", ["auto", "true", "false"],
      "Weight ranges per output channel: auto = per channel for conv layers, "
      "per tensor for Dense.")
  h["epochs"] = flags.DEFINE_integer(
      "epochs", None, "Training epochs (classification 30, detection 10).",
      lower_bound=1)
  h["batch_size"] = flags.DEFINE_integer(
      "batch_size", None,
      "Global batch size, split across replicas (classification 64, "
      "detection 16).", lower_bound=1)
  h["learning_rate"] = flags.DEFINE_float(
      "learning_rate", 1e-3, "Peak learning rate.", lower_bound=0.0)
  h["lr_schedule"] = flags.DEFINE_enum(
      "lr_schedule", "constant", list(runs.LR_SCHEDULES),
      "Learning-rate schedule over the whole run.")
  h["augment"] = flags.DEFINE_bool(
      "augment", None,
      "Random flip + pad-and-crop (classification, default off) or flip + "
      "translation (detection, default on).")
  h["train_examples"] = flags.DEFINE_integer(
      "train_examples", None,
      "Train on the first n examples only (small sets make overfitting, and "
      "so regularization, visible).", lower_bound=1)
  h["val_examples"] = flags.DEFINE_integer(
      "val_examples", None,
      "Evaluate on the first n validation examples only.", lower_bound=1)
  h["seed"] = flags.DEFINE_integer(
      "seed", 0, "Seed for weights, shuffling, augmentation, label noise.")
  h["noise_analysis"] = flags.DEFINE_bool(
      "noise_analysis", True, "Record per-layer weight noise every epoch.")
  h["noise_every"] = flags.DEFINE_integer(
      "noise_every", 1, "Epochs between noise records.", lower_bound=1)
  h["export_tflite"] = flags.DEFINE_bool(
      "export_tflite", False,
      "Write model.tflite after training and verify it in LiteRT on the "
      "validation split (figures in result.json).")
  h["strategy"] = flags.DEFINE_enum(
      "strategy", "default", list(runs.STRATEGIES), "tf.distribute strategy.")
  h["deterministic"] = flags.DEFINE_bool(
      "deterministic", False,
      "TensorFlow op determinism: bit-identical reruns on CPU.")
  h["virtual_cpus"] = flags.DEFINE_integer(
      "virtual_cpus", 0,
      "Split the CPU into n logical devices, e.g. to try --strategy=mirrored "
      "on one machine (0: off).", lower_bound=0)
  h["verbose"] = flags.DEFINE_integer(
      "verbose", 2, "Keras fit verbosity: 0 silent, 1 bar, 2 line/epoch.")
  h["freeze_ranges_after"] = flags.DEFINE_integer(
      "freeze_ranges_after", None,
      "Freeze the activation ranges after this many epochs: later steps "
      "quantize on the ranges reached and skip their update (faster; "
      "training values then differ from tfmot's). Default: never.",
      lower_bound=1)
  h["init_from"] = flags.DEFINE_string(
      "init_from", None,
      "Model dir of a finished float (--bits=fp) run of the same model: its "
      "trained weights initialize this run before quantization (short QAT "
      "from a float checkpoint; auto: measures sensitivity on them).")
  return h


def _define_classify() -> Dict[str, flags.FlagHolder]:
  from kqreg import classify, models  # pylint: disable=g-import-not-at-top
  h = {}
  h["model"] = flags.DEFINE_enum("model", "cnn", list(models.MODELS),
                                 "Model from the kqreg zoo.")
  h["model_args"] = flags.DEFINE(
      _ModelArgsParser(), "model_args", "{}",
      "Overrides of the model preset as a Python dict literal, e.g. "
      "\"{'widths': (16, 32, 64), 'dropout': 0.1}\" (keys per model in "
      "kqreg.models.MODELS).")
  h["optimizer"] = flags.DEFINE_enum("optimizer", "adam",
                                     list(classify.OPTIMIZERS), "Optimizer.")
  h["weight_decay"] = flags.DEFINE_float(
      "weight_decay", 0.0, "Decoupled weight decay.", lower_bound=0.0)
  h["label_noise"] = flags.DEFINE_float(
      "label_noise", 0.0,
      "Fraction of training labels replaced by another class (seeded by "
      "--seed, recorded in result.json); validation and test stay clean.",
      lower_bound=0.0, upper_bound=0.99)
  h["jit_compile"] = flags.DEFINE_bool("jit_compile", False,
                                       "XLA-compile the training step.")
  return h


def import_detection() -> None:
  """Imports kqreg.detection without keras-cv's stdout banner.

  keras-cv (through keras-core) prints "Using TensorFlow backend" at import;
  a trainer's stdout is for its results.
  """
  with contextlib.redirect_stdout(io.StringIO()):
    import kqreg.detection  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


def _define_detect() -> Dict[str, flags.FlagHolder]:
  import_detection()
  from kqreg.detection import model as model_lib  # pylint: disable=g-import-not-at-top
  h = {}
  h["backbone"] = flags.DEFINE_enum("backbone", "xs",
                                    list(model_lib.BACKBONES),
                                    "YOLOv8 backbone size.")
  h["image_size"] = flags.DEFINE_integer(
      "image_size", 64, "Square input size, a multiple of 32.", lower_bound=32)
  h["fpn_depth"] = flags.DEFINE_integer(
      "fpn_depth", 1, "Depth of the FPN's CSP blocks.", lower_bound=1)
  h["max_boxes"] = flags.DEFINE_integer("max_boxes", 32,
                                        "Boxes kept per image.", lower_bound=1)
  h["map_examples"] = flags.DEFINE_integer(
      "map_examples", 64,
      "Validation images for the per-epoch mAP (0: off).", lower_bound=0)
  flags.register_validator(
      "image_size", lambda v: v % model_lib.SIZE_MULTIPLE == 0,
      message=f"--image_size must be a multiple of {model_lib.SIZE_MULTIPLE}, "
      "e.g. 64 or 96.")
  return h


def _define_sweep() -> Dict[str, flags.FlagHolder]:
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  h = {}
  h["task"] = flags.DEFINE_enum("task", "classify", list(runs.TASKS),
                                "What to train: classifiers or detectors.")
  h["sweep_bits"] = flags.DEFINE_string(
      "sweep_bits", "fp,w8,w6,w4,w3,w2",
      "Bit policies to sweep, comma separated; use ';' to separate policies "
      "that contain commas themselves ('fp;w4,first=w8;w2,first=w8').")
  h["seeds"] = flags.DEFINE_list("seeds", ["0", "1", "2"],
                                 "Seeds to run each policy with.")
  h["output_dir"] = flags.DEFINE_string(
      "output_dir", "runs/sweep", "Folder for the runs and the report.")
  h["title"] = flags.DEFINE_string("title", "Bit-width sweep",
                                   "Title of report.md.")
  h["workers"] = flags.DEFINE_integer(
      "workers", 0,
      "Runs trained at once, each in its own process with its share of the "
      "cores (0: one per core, at most 8; 1: in this process).",
      lower_bound=0)
  return h


def _define_export() -> Dict[str, flags.FlagHolder]:
  h = {}
  h["output"] = flags.DEFINE_string(
      "output", None,
      "The .tflite file to write (default <model_dir>/model.tflite); its "
      "report goes to <output>.json.")
  h["int_io"] = flags.DEFINE_bool("int_io", False,
                                  "int8 input and output tensors.")
  h["allow_activation_widening"] = flags.DEFINE_bool(
      "allow_activation_widening", False,
      "Export models with activations below 8 bits anyway (TFLite computes "
      "them in 8 bits).")
  h["allow_float"] = flags.DEFINE_bool(
      "allow_float", False, "Export a run that was never quantized as float32.")
  h["verify_examples"] = flags.DEFINE_integer(
      "verify_examples", 256,
      "Validation examples to compare file and Keras model on (0: skip "
      "verification).", lower_bound=0)
  return h


def _define_benchmark() -> Dict[str, flags.FlagHolder]:
  h = {}
  h["output_dir"] = flags.DEFINE_string(
      "output_dir", "runs/benchmark", "Folder for benchmark.json and .md.")
  h["quick"] = flags.DEFINE_bool(
      "quick", False, "A small, fast run (a smoke test of the benchmark).")
  h["repeats"] = flags.DEFINE_integer("repeats", 5,
                                      "Repetitions per timing (median).",
                                      lower_bound=1)
  h["rounds"] = flags.DEFINE_integer(
      "rounds", 20,
      "Interleaved rounds of 10 steps per step-time comparison (a quarter "
      "of them, at least 3, under XLA), shared among --processes.",
      lower_bound=1)
  h["processes"] = flags.DEFINE_integer(
      "processes", 5,
      "Fresh processes per model for the step times: a process settles into "
      "a speed of its own, so the interval comes from the spread between "
      "processes (1: all rounds in the benchmark's own process).",
      lower_bound=1)
  return h


def _define_sensitivity() -> Dict[str, flags.FlagHolder]:
  h = {}
  h["sensitivity_bits"] = flags.DEFINE_list(
      "sensitivity_bits", ["2", "3", "4", "6", "8"],
      "Weight bit-widths to measure each layer at.")
  h["budget"] = flags.DEFINE_string(
      "budget", None,
      "Also allocate bits under this budget, spelled as in --bits=auto: "
      "(4.0 mean bits, 0.15x of float32, 120KiB), and print the policy.")
  h["choices"] = flags.DEFINE_list(
      "choices", ["2", "3", "4", "8"], "Bit-widths --budget may choose from.")
  h["base"] = flags.DEFINE_string(
      "base", "w8a8",
      "Base policy of the allocation: activation bits, first/last pins, "
      "skips (as in --bits=auto:<budget>:<base>).")
  h["calibration_examples"] = flags.DEFINE_integer(
      "calibration_examples", 256,
      "Training examples in the calibration batch.", lower_bound=1)
  h["output_dir"] = flags.DEFINE_string(
      "output_dir", None,
      "Folder for sensitivity.csv and sensitivity.png (default "
      "<model_dir>/sensitivity).")
  return h


def _define_model_dir() -> Dict[str, flags.FlagHolder]:
  return {"model_dir": flags.DEFINE_string(
      "model_dir", None,
      "Run folder: training writes it (rerunning the same command resumes); "
      "kqreg-export reads it.")}


_GROUPS: Dict[str, Callable[[], Dict[str, flags.FlagHolder]]] = {
    "model_dir": _define_model_dir, "run": _define_run, "classify": _define_classify,
    "detect": _define_detect, "sweep": _define_sweep,
    "export": _define_export, "benchmark": _define_benchmark,
    "sensitivity": _define_sensitivity,
}
_DEFINED: Dict[str, Dict[str, flags.FlagHolder]] = {}

# Flags whose default differs between the tasks; None in the flag means
# "the task's default".
TASK_DEFAULTS = {
    "classify": {"dataset": "kqreg_digits", "epochs": 30, "batch_size": 64,
                 "augment": False},
    "detect": {"dataset": "kqreg_shapes", "epochs": 10, "batch_size": 16,
               "augment": True},
}


def define_flags(*groups: str) -> types.SimpleNamespace:
  """Defines the flags of `groups` (idempotent); returns their FlagHolders."""
  holders = {}
  for group in groups:
    if group not in _DEFINED:
      _DEFINED[group] = _GROUPS[group]()
    holders.update(_DEFINED[group])
  return types.SimpleNamespace(**holders)


def given(name: str) -> bool:
  """True if flag `name` was set on the command line or in a flagfile."""
  return name in FLAGS and FLAGS[name].present


def check_task_flags(task: str) -> None:
  """Refuses a flag given that only the other task uses."""
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  for other in runs.TASKS:
    if other == task or other not in _DEFINED:
      continue
    for name in _DEFINED[other]:
      if given(name):
        raise runs.ConfigError(
            f"--{name} applies to --task={other} only; drop it or switch "
            "--task.")


def run_config(task: str, model_dir: str, **overrides):
  """The task's `RunConfig` from the parsed flags, `overrides` on top."""
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  config_class = runs.task_named(task).config_class
  values = {name: holder.value for name, holder in _DEFINED["run"].items()}
  values.update({name: holder.value
                 for name, holder in _DEFINED.get(task, {}).items()})
  for name, default in TASK_DEFAULTS[task].items():
    if values[name] is None:
      values[name] = default
  values["per_channel"] = {"auto": None, "true": True,
                           "false": False}[values["per_channel"]]
  if "model_args" in values:
    values["model_kwargs"] = values.pop("model_args")
  values.update(model_dir=model_dir, **overrides)
  fields = {f for f in config_class.__dataclass_fields__}
  return config_class(**{k: v for k, v in values.items() if k in fields})


def parser(prog: str):
  """An absl `flags_parser` that reports a bad flag in one line, exit 2."""

  def _parse(argv):
    try:
      return FLAGS(argv)
    except flags.Error as e:
      fail(prog, e)

  return _parse


def fail(prog: str, error: BaseException, status: int = EXIT_BAD_INPUT):
  """Exits with `status` and one readable line (no traceback)."""
  message = str(error).strip().splitlines()
  sys.stderr.write(f"{prog}: error: {' '.join(message)}\n")
  sys.exit(status)


def run_main(prog: str, argv, fn):
  """An entry point's body: quiet logs, no stray arguments, `run_guarded`."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.ERROR)  # TF/TFDS info; kqreg warns itself
  if len(argv) > 1:
    fail(prog, app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}"))
  return run_guarded(prog, fn)


def run_guarded(prog: str, fn):
  """Calls `fn()`, turning kqreg's user-facing errors into one-line exits."""
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  try:
    return fn()
  except runs.BAD_INPUT_ERRORS as e:
    fail(prog, e, EXIT_BAD_INPUT)
  except runs.TrainingDiverged as e:
    fail(prog, e, EXIT_DIVERGED)
  except runs.TrainingInterrupted as e:
    fail(prog, e, EXIT_INTERRUPTED)
