"""Flags of the kqreg trainers: `define_flags(task...)`, all optional.

Override order: defaults here < a `--flagfile` (absl's own) < flags on the
command line, later ones winning. Each entry point marks what it requires.
"""

from __future__ import annotations

import ast
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

from absl import flags  # noqa: E402


def _import_kqreg_quietly() -> None:
  """Imports kqreg (so TensorFlow) with the C library's stderr muted.

  TensorFlow 2.21 prints INFO lines from C++ at import and at device setup
  that no environment variable silences; a trainer's stderr is for its own
  messages. Python errors still surface: they are raised after stderr is back.
  """
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


_import_kqreg_quietly()

from kqreg import models, training  # noqa: E402
from kqreg.policy import BitPolicy, PolicyError  # noqa: E402

FLAGS = flags.FLAGS


def _valid_policy(text: str) -> bool:
  try:
    BitPolicy.parse(text)
  except PolicyError as e:
    raise flags.ValidationError(str(e)) from e
  return True


# Flags whose default differs between the tasks (classification first).
TASK_DEFAULTS = {
    "classify": {"dataset": "kqreg_digits", "epochs": 30, "batch_size": 64,
                 "augment": False},
    "detect": {"dataset": "kqreg_shapes", "epochs": 10, "batch_size": 16,
               "augment": True},
}
# Flags that mean something to one task only.
TASK_FLAGS = {
    "classify": ("model", "model_args", "optimizer", "weight_decay",
                 "jit_compile", "deterministic", "virtual_cpus"),
    "detect": ("backbone", "image_size", "max_boxes", "val_examples",
               "map_examples"),
}


def define_flags(*tasks: str) -> None:
  """Defines the flags of `tasks` ("classify", "detect"; idempotent).

  Flags both tasks share are defined once with the same name and meaning;
  each entry point then calls `use_task_defaults`.
  """
  _define_common_flags()
  for task in tasks or ("classify",):
    {"classify": _define_classify_flags,
     "detect": _define_detect_flags}[task]()


def use_task_defaults(task: str) -> None:
  """Sets `task`'s defaults on the flags not given on the command line."""
  for name, value in TASK_DEFAULTS[task].items():
    FLAGS.set_default(name, value)


def check_task_flags(task: str) -> None:
  """Raises `ConfigError` for a flag given that only the other task uses."""
  for other, names in TASK_FLAGS.items():
    if other == task:
      continue
    for name in names:
      if name in FLAGS and FLAGS[name].present:
        raise training.ConfigError(
            f"--{name} applies to --task={other} only; drop it or switch "
            "--task.")


def _define_common_flags() -> None:
  if "bits" in FLAGS:
    return
  flags.DEFINE_string(
      "dataset", TASK_DEFAULTS["classify"]["dataset"],
      "TFDS dataset prepared in --data_dir, or an offline one. "
      "Classification: mnist, fashion_mnist, cifar10, cifar100, imagenette, "
      "..., offline kqreg_digits, kqreg_textures. Detection: voc/2007, "
      "voc/2012, coco/2017, offline kqreg_shapes.")
  flags.DEFINE_string("data_dir", None,
                      "TFDS data dir holding prepared real datasets.")
  flags.DEFINE_string(
      "bits", "fp",
      "Bit policy: fp, w8, w4 (weight-only), w4a8, "
      "'w4,first=w8,last=w8', 'w4a8,conv2d_3=w2,Dense=w8', ...")
  flags.DEFINE_enum(
      "per_channel", "auto", ["auto", "true", "false"],
      "Weight ranges per output channel: auto = per channel for conv layers, "
      "per tensor for Dense.")
  flags.DEFINE_integer("epochs", TASK_DEFAULTS["classify"]["epochs"],
                       "Training epochs.", lower_bound=1)
  flags.DEFINE_integer("batch_size", TASK_DEFAULTS["classify"]["batch_size"],
                       "Global batch size (split across replicas).",
                       lower_bound=1)
  flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.",
                     lower_bound=0.0)
  flags.DEFINE_enum("lr_schedule", "constant", list(training.LR_SCHEDULES),
                    "Learning-rate schedule over the whole run.")
  flags.DEFINE_bool(
      "augment", TASK_DEFAULTS["classify"]["augment"],
      "Random flip + pad-and-crop (classification) or flip + translation "
      "(detection).")
  flags.DEFINE_integer(
      "train_examples", None,
      "Train on the first n examples only (small sets make overfitting, and "
      "so regularization, visible).", lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Seed for weights, shuffling, augmentation.")
  flags.DEFINE_string("model_dir", None,
                      "Output folder; rerunning the same command resumes.")
  flags.DEFINE_bool("noise_analysis", True,
                    "Record per-layer weight noise every epoch.")
  flags.DEFINE_integer("noise_every", 1, "Epochs between noise records.",
                       lower_bound=1)
  flags.DEFINE_bool(
      "export_tflite", False,
      "Write model.tflite after training and verify it in LiteRT on the "
      "validation split (figures in result.json).")
  flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES),
                    "tf.distribute strategy.")
  flags.DEFINE_integer("verbose", 2,
                       "Keras fit verbosity: 0 silent, 1 bar, 2 line/epoch.")
  flags.register_validator("bits", _valid_policy,
                           message="--bits is not a valid bit policy.")


def _define_classify_flags() -> None:
  if "model" in FLAGS:
    return
  flags.DEFINE_enum("model", "cnn", list(models.MODELS),
                    "Model from the kqreg zoo.")
  flags.DEFINE_string(
      "model_args", "{}",
      "Overrides of the model preset as a Python dict literal, e.g. "
      "\"{'widths': (16, 32, 64), 'dropout': 0.1}\" (keys per model in "
      "kqreg.models.MODELS).")
  flags.DEFINE_enum("optimizer", "adam", list(training.OPTIMIZERS),
                    "Optimizer.")
  flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay.",
                     lower_bound=0.0)
  flags.DEFINE_bool("jit_compile", False, "XLA-compile the training step.")
  flags.DEFINE_bool("deterministic", False,
                    "TensorFlow op determinism: bit-identical reruns on CPU.")
  flags.DEFINE_integer(
      "virtual_cpus", 0,
      "Split the CPU into n logical devices, e.g. to try --strategy=mirrored "
      "on one machine (0: off).", lower_bound=0)
  flags.register_validator("model_args", _valid_model_args,
                           message="--model_args is not a dict literal.")


def _define_detect_flags() -> None:
  if "backbone" in FLAGS:
    return
  from kqreg.detection import model as model_lib  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("backbone", "xs", list(model_lib.BACKBONES),
                    "YOLOv8 backbone size.")
  flags.DEFINE_integer("image_size", 64,
                       "Square input size, a multiple of 32.", lower_bound=32)
  flags.DEFINE_integer("max_boxes", 32, "Boxes kept per image.",
                       lower_bound=1)
  flags.DEFINE_integer("val_examples", None,
                       "Evaluate on the first n validation examples only.",
                       lower_bound=1)
  flags.DEFINE_integer("map_examples", 64,
                       "Validation images for the per-epoch mAP (0: off).",
                       lower_bound=0)
  flags.register_validator(
      "image_size", lambda v: v % model_lib.SIZE_MULTIPLE == 0,
      message=f"--image_size must be a multiple of {model_lib.SIZE_MULTIPLE}, "
      "e.g. 64 or 96.")


def _valid_model_args(text: str) -> bool:
  model_args(text)
  return True


def model_args(text: str) -> dict:
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


# Flags that map one to one onto fields of both TrainConfig and DetectConfig.
_SHARED_FIELDS = ("dataset", "data_dir", "bits", "epochs", "batch_size",
                  "learning_rate", "lr_schedule", "augment", "train_examples",
                  "seed", "noise_analysis", "noise_every", "export_tflite",
                  "strategy", "verbose")


def _config_values(task: str, model_dir: str, overrides) -> dict:
  # --model_args becomes `model_kwargs` (parsed); the rest map by name.
  names = _SHARED_FIELDS + tuple(n for n in TASK_FLAGS[task]
                                 if n != "model_args")
  values = {name: FLAGS[name].value for name in names}
  values.update(model_dir=model_dir, per_channel={
      "auto": None, "true": True, "false": False}[FLAGS.per_channel])
  values.update(overrides)
  return values


def train_config(model_dir: str, **overrides) -> training.TrainConfig:
  """A `TrainConfig` from the parsed flags, with `overrides` on top."""
  return training.TrainConfig(**_config_values(
      "classify", model_dir,
      dict(dict(model_kwargs=model_args(FLAGS.model_args)), **overrides)))


def detect_config(model_dir: str, **overrides):
  """A `kqreg.detection.DetectConfig` from the parsed flags + `overrides`."""
  from kqreg.detection import training as detect_training  # pylint: disable=g-import-not-at-top
  return detect_training.DetectConfig(**_config_values("detect", model_dir,
                                                       overrides))


def parser(prog: str):
  """An absl `flags_parser` that reports a bad flag in one line, exit 2."""

  def _parse(argv):
    try:
      return FLAGS(argv)
    except flags.Error as e:
      fail(prog, e)

  return _parse


def fail(prog: str, error: BaseException, status: int = 2) -> None:
  """Exits with `status` and one readable line (no traceback)."""
  message = str(error).strip().splitlines()
  sys.stderr.write(f"{prog}: error: {' '.join(message)}\n")
  sys.exit(status)


# Exit statuses: 2 bad input, 3 training diverged, 130 interrupted (as
# shells report SIGINT).
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def run_guarded(prog: str, fn):
  """Calls `fn()`, turning kqreg's user-facing errors into one-line exits."""
  from kqreg.data import DatasetError  # pylint: disable=g-import-not-at-top
  from kqreg.export import ExportError  # pylint: disable=g-import-not-at-top
  from kqreg.models import UnknownModelError  # pylint: disable=g-import-not-at-top
  from kqreg.policy import PolicyError  # pylint: disable=g-import-not-at-top
  try:
    return fn()
  except (training.ConfigError, training.CheckpointError, DatasetError,
          UnknownModelError, PolicyError, ExportError) as e:
    fail(prog, e, EXIT_BAD_INPUT)
  except training.TrainingDiverged as e:
    fail(prog, e, EXIT_DIVERGED)
  except training.TrainingInterrupted as e:
    fail(prog, e, EXIT_INTERRUPTED)
