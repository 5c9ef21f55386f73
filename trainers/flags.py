"""Every flag of the kqreg trainers, defined here and nowhere else.

Each entry point (through `app.start`) calls `app.quiet_import()` and then
`define_flags(groups...)`, which returns the `FlagHolder`s of the groups it
defined (absl's typed handles: `holders.bits.value`). Groups: "model_dir",
"run" (what classification and detection runs share), "classify", "detect",
"sweep", "export", "benchmark", "sensitivity".

One source of defaults: a flag that sets a config field takes its default and
help from that field (`RunConfig`, `ClassifyConfig`, `DetectConfig`:
`kqreg.runs.config.option`); the other flags take theirs from the function
or constant of kqreg they feed. A "run" flag whose default differs between the
tasks defined together (kqreg-sweep defines both) defaults to None, "the
task's default", and its help names each task's. Flags are defined after
`quiet_import` because the config classes import TensorFlow.

All flags are optional, so tests need none; each entry point marks its
required ones. Override order: defaults < a `--flagfile` (absl's own) <
flags on the command line, later ones winning. `--bits` is parsed once, by
its flag parser, into a `kqreg.BitPolicy`; a malformed policy fails flag
parsing with one line.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import types
from typing import Callable, Dict, Sequence, Tuple

from absl import flags

FLAGS = flags.FLAGS

TASK_GROUPS = ("classify", "detect")
# Flag name -> config field name, where they differ.
FIELD_OF = {"model_args": "model_kwargs"}
# --per_channel's values -> RunConfig.per_channel's.
PER_CHANNEL = {"auto": None, "true": True, "false": False}


class _PolicyParser(flags.ArgumentParser):
  """Parses `--bits` into a `kqreg.BitPolicy` or an auto policy.

  Errors quote the token.
  """

  syntactic_help = ("a bit policy such as w4a8 or 'w4,first=w8,last=w8', or "
                    "auto:<budget>")

  def parse(self, argument):
    from kqreg.mixed_precision import auto_policy  # pylint: disable=g-import-not-at-top
    from kqreg.qat.policy import PolicyError  # pylint: disable=g-import-not-at-top
    try:
      return auto_policy.parse(argument)
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


def config_class(task: str) -> type:
  """The config dataclass of `task` ("classify" or "detect")."""
  if task == "detect":
    import_detection()
    from kqreg.detection.task import DetectConfig  # pylint: disable=g-import-not-at-top
    return DetectConfig
  from kqreg.classification.task import ClassifyConfig  # pylint: disable=g-import-not-at-top
  return ClassifyConfig


def _flag_value(name: str, value):
  """A config field's default as its flag's default."""
  if name == "per_channel":
    return {v: k for k, v in PER_CHANNEL.items()}[value]
  return value


def _field(define: Callable, name: str, classes: Sequence[Tuple[str, type]],
           parser=None, **kwargs) -> flags.FlagHolder:
  """Defines flag `name` with the default and help of its config field.

  `classes` are the (task, config class) pairs the flag feeds; when their
  defaults differ the flag defaults to None, the task's default.
  """
  from kqreg.runs.config import default_of, help_of  # pylint: disable=g-import-not-at-top
  field = FIELD_OF.get(name, name)
  defaults = {task: default_of(cls, field) for task, cls in classes}
  text = help_of(classes[0][1], field)
  values = list(defaults.values())
  if all(v == values[0] for v in values):
    default = _flag_value(name, values[0])
  else:
    default = None
    text += " Default: the task's (" + ", ".join(
        f"{task} {_flag_value(name, v)}" for task, v in defaults.items()) + ")."
  if parser is not None:  # flags.DEFINE
    return define(parser, name, default, text, **kwargs)
  return define(name=name, default=default, help=text, **kwargs)


def _define_run(tasks: Sequence[str]) -> Dict[str, flags.FlagHolder]:
  from kqreg.runs import config as run_config  # pylint: disable=g-import-not-at-top
  classes = [(task, config_class(task)) for task in tasks]
  h = {}

  def field(define, name, parser=None, **kwargs):
    h[name] = _field(define, name, classes, parser, **kwargs)

  field(flags.DEFINE_string, "dataset")
  field(flags.DEFINE_string, "data_dir")
  field(flags.DEFINE, "bits", _PolicyParser(), serializer=_PolicySerializer())
  field(flags.DEFINE_enum, "per_channel", enum_values=list(PER_CHANNEL))
  field(flags.DEFINE_integer, "epochs", lower_bound=1)
  field(flags.DEFINE_integer, "batch_size", lower_bound=1)
  field(flags.DEFINE_float, "learning_rate", lower_bound=0.0)
  field(flags.DEFINE_enum, "lr_schedule",
        enum_values=list(run_config.LR_SCHEDULES))
  field(flags.DEFINE_bool, "augment")
  field(flags.DEFINE_integer, "train_examples", lower_bound=1)
  field(flags.DEFINE_integer, "val_examples", lower_bound=1)
  field(flags.DEFINE_integer, "seed")
  field(flags.DEFINE_bool, "noise_analysis")
  field(flags.DEFINE_integer, "noise_every", lower_bound=1)
  field(flags.DEFINE_bool, "export_tflite")
  field(flags.DEFINE_enum, "storage", enum_values=["size", "speed", "auto"])
  field(flags.DEFINE_enum, "strategy", enum_values=list(run_config.STRATEGIES))
  field(flags.DEFINE_bool, "deterministic")
  field(flags.DEFINE_integer, "virtual_cpus", lower_bound=0)
  field(flags.DEFINE_integer, "verbose")
  field(flags.DEFINE_integer, "freeze_ranges_after", lower_bound=1)
  field(flags.DEFINE_string, "init_from")
  return h


def _define_classify() -> Dict[str, flags.FlagHolder]:
  from kqreg.classification import models  # pylint: disable=g-import-not-at-top
  from kqreg.classification import task as classify  # pylint: disable=g-import-not-at-top
  classes = [("classify", classify.ClassifyConfig)]
  h = {}

  def field(define, name, parser=None, **kwargs):
    h[name] = _field(define, name, classes, parser, **kwargs)

  field(flags.DEFINE_enum, "model", enum_values=list(models.MODELS))
  field(flags.DEFINE, "model_args", _ModelArgsParser())
  field(flags.DEFINE_enum, "optimizer", enum_values=list(classify.OPTIMIZERS))
  field(flags.DEFINE_float, "weight_decay", lower_bound=0.0)
  field(flags.DEFINE_float, "label_noise", lower_bound=0.0, upper_bound=0.99)
  field(flags.DEFINE_bool, "jit_compile")
  field(flags.DEFINE_bool, "integer_attention")
  field(flags.DEFINE_bool, "integer_layer_norm")
  return h


def _define_detect() -> Dict[str, flags.FlagHolder]:
  detect_config = config_class("detect")
  from kqreg.detection import model as model_lib  # pylint: disable=g-import-not-at-top
  classes = [("detect", detect_config)]
  h = {}

  def field(define, name, parser=None, **kwargs):
    h[name] = _field(define, name, classes, parser, **kwargs)

  field(flags.DEFINE_enum, "backbone", enum_values=list(model_lib.BACKBONES))
  field(flags.DEFINE_integer, "image_size", lower_bound=32)
  field(flags.DEFINE_integer, "fpn_depth", lower_bound=1)
  field(flags.DEFINE_integer, "max_boxes", lower_bound=1)
  field(flags.DEFINE_integer, "map_examples", lower_bound=0)
  field(flags.DEFINE_float, "bn_momentum", lower_bound=0.0)
  flags.register_validator(
      "bn_momentum", lambda v: v < 1.0,
      message="--bn_momentum must be below 1, e.g. 0.9.")
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
  h["arms"] = flags.DEFINE_string(
      "arms", None,
      "The arms, instead of --sweep_bits: a bit policy with optional other "
      "settings of the run, <policy>[+key=value...], comma separated (';' "
      "if a policy has commas), e.g. 'fp,w4,n4,fp+weight_decay=0.01' (a "
      "positive control: an established regularizer on the same seeds).")
  h["equivalence_margins"] = flags.DEFINE_string(
      "equivalence_margins", "",
      "Equivalence margins declared before the run, metric:margin comma "
      "separated (val_accuracy:0.02,val_loss:0.05; metrics: val_loss, "
      "best_val_loss, gap_loss, val_accuracy or val_map50): the report "
      "reads |arm − fp| < margin by TOST as 'equivalent'. Without one, "
      "equivalence is never claimed for that metric.")
  h["combine"] = flags.DEFINE_list(
      "combine", [],
      "Instead of training: the --output_dir of two or more finished "
      "sweeps (one setting each), set side by side in --output_dir "
      "(cross_setting.md/.csv/.png: each arm's paired effect per setting "
      "and pooled over settings).")
  h["setting_names"] = flags.DEFINE_list(
      "setting_names", [],
      "With --combine: a short name per sweep, in its order (default: each "
      "report's title).")
  h["seeds"] = flags.DEFINE_list("seeds", ["0", "1", "2"],
                                 "Seeds to run each policy with.")
  h["output_dir"] = flags.DEFINE_string(
      "output_dir", "runs/sweep", "Folder for the runs and the report.")
  h["title"] = flags.DEFINE_string("title", "Bit-width sweep",
                                   "Title of report.md.")
  h["workers"] = flags.DEFINE_integer(
      "workers", 0,
      "Runs trained at once, each in its own process with its share of the "
      "cores (0: one per core and one more, at most 8; 1: in this process). "
      "Unused with --ray_address.",
      lower_bound=0)
  from kqreg.study.sweep import ray_cluster  # pylint: disable=g-import-not-at-top
  ray_defaults = ray_cluster.RayOptions("")
  h["ray_address"] = flags.DEFINE_string(
      "ray_address", None,
      "Run each (bits, seed) run as a task on this Ray cluster: auto (the "
      "cluster started on this machine), <host:port> (its head) or "
      "ray://<host:port> (Ray Client). Needs kqreg[cluster]; the output "
      "and data folders must be on storage every node shares. Unset: this "
      "machine's --workers.")
  h["ray_cpus_per_run"] = flags.DEFINE_integer(
      "ray_cpus_per_run", ray_defaults.cpus_per_run,
      "With --ray_address: CPUs Ray reserves for each run (TensorFlow's "
      "threads in it).", lower_bound=1)
  h["ray_gpus_per_run"] = flags.DEFINE_float(
      "ray_gpus_per_run", ray_defaults.gpus_per_run,
      "With --ray_address: GPUs Ray reserves for each run (0: none).",
      lower_bound=0.0)
  h["ray_max_retries"] = flags.DEFINE_integer(
      "ray_max_retries", ray_defaults.max_retries,
      "With --ray_address: times a run is restarted after its worker or "
      "node died (it resumes from its backup); a run's own error is never "
      "retried.", lower_bound=0)
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
  h["storage"] = flags.DEFINE_enum(
      "storage", None, ["size", "speed", "auto"],
      "Kernel storage: size (<= 4-bit kernels packed as INT4), speed (the "
      "type LiteRT runs fastest per op), auto (INT4 only where not slower). "
      "Default: the run's --storage.")
  h["verify_examples"] = flags.DEFINE_integer(
      "verify_examples", None,
      "Validation examples to compare file and Keras model on (0: skip "
      "verification). Default: the task's export default.", lower_bound=0)
  return h


def _defaults_of(fn: Callable) -> Dict[str, object]:
  return {name: p.default for name, p in inspect.signature(fn).parameters.items()
          if p.default is not inspect.Parameter.empty}


def _define_benchmark() -> Dict[str, flags.FlagHolder]:
  from kqreg.study.benchmark import suite  # pylint: disable=g-import-not-at-top
  defaults = _defaults_of(suite.run_benchmark)
  h = {}
  h["output_dir"] = flags.DEFINE_string(
      "output_dir", "runs/benchmark", "Folder for benchmark.json and .md.")
  h["quick"] = flags.DEFINE_bool(
      "quick", defaults["quick"],
      "A small, fast run (a smoke test of the benchmark).")
  h["repeats"] = flags.DEFINE_integer("repeats", defaults["repeats"],
                                      "Repetitions per timing (median).",
                                      lower_bound=1)
  h["rounds"] = flags.DEFINE_integer(
      "rounds", defaults["rounds"],
      "Interleaved rounds of 10 steps per step-time comparison (a quarter "
      "of them, at least 3, under XLA), shared among --processes.",
      lower_bound=1)
  h["processes"] = flags.DEFINE_integer(
      "processes", defaults["processes"],
      "Fresh processes per model for the step times: a process settles into "
      "a speed of its own, so the interval comes from the spread between "
      "processes (1: all rounds in the benchmark's own process).",
      lower_bound=1)
  return h


def _define_sensitivity() -> Dict[str, flags.FlagHolder]:
  from kqreg.mixed_precision import allocator  # pylint: disable=g-import-not-at-top
  from kqreg.mixed_precision import auto_policy  # pylint: disable=g-import-not-at-top
  from kqreg.mixed_precision import layer_sensitivity  # pylint: disable=g-import-not-at-top
  h = {}
  h["sensitivity_bits"] = flags.DEFINE_list(
      "sensitivity_bits", [str(b) for b in layer_sensitivity.DEFAULT_BITS],
      "Weight bit-widths to measure each layer at.")
  h["budget"] = flags.DEFINE_string(
      "budget", None,
      "Also allocate bits under this budget, spelled as in --bits=auto: "
      "(4.0 mean bits, 0.15x of float32, 120KiB), and print the policy.")
  h["choices"] = flags.DEFINE_list(
      "choices", [str(b) for b in allocator.DEFAULT_CHOICES],
      "Bit-widths --budget may choose from.")
  h["base"] = flags.DEFINE_string(
      "base", auto_policy.DEFAULT_BASE,
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
  from kqreg.runs.config import RunConfig, help_of  # pylint: disable=g-import-not-at-top
  return {"model_dir": flags.DEFINE_string(
      "model_dir", None, help_of(RunConfig, "model_dir"))}


_GROUPS: Dict[str, Callable[[], Dict[str, flags.FlagHolder]]] = {
    "model_dir": _define_model_dir, "classify": _define_classify,
    "detect": _define_detect, "sweep": _define_sweep,
    "export": _define_export, "benchmark": _define_benchmark,
    "sensitivity": _define_sensitivity,
}
# Group name -> its FlagHolders, for every group defined in this process.
DEFINED: Dict[str, Dict[str, flags.FlagHolder]] = {}


def define_flags(*groups: str) -> types.SimpleNamespace:
  """Defines the flags of `groups` (idempotent); returns their FlagHolders.

  "run" takes its defaults from the task groups among `groups` (both tasks'
  when none is).
  """
  holders = {}
  tasks = tuple(g for g in groups if g in TASK_GROUPS) or TASK_GROUPS
  for group in groups:
    if group not in DEFINED:
      DEFINED[group] = (_define_run(tasks) if group == "run"
                        else _GROUPS[group]())
    holders.update(DEFINED[group])
  return types.SimpleNamespace(**holders)


def import_detection() -> None:
  """Imports kqreg.detection without keras-cv's stdout banner.

  keras-cv (through keras-core) prints "Using TensorFlow backend" at import;
  a trainer's stdout is for its results.
  """
  with contextlib.redirect_stdout(io.StringIO()):
    import kqreg.detection  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
