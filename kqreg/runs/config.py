"""The fields every run shares (`RunConfig`) and the errors of a run.

A task (`kqreg.classification.task`, `kqreg.detection.task`) subclasses `RunConfig`
with its own fields; `kqreg.runs.run` takes any of them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Dict, Optional, Tuple

from kqreg.mixed_precision import auto_policy as auto_bits
from kqreg.qat import policy as policy_lib

__all__ = ["RunConfig", "ConfigError", "TrainingInterrupted", "LR_SCHEDULES",
           "STRATEGIES", "default_of", "help_of", "option", "positive_int"]

LR_SCHEDULES = ("constant", "cosine", "step")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class ConfigError(ValueError):
  """A run config that cannot run, with the flag to change.

  Example:
  >>> import kqreg.runs
  >>> try:
  ...   kqreg.runs.make_dir("/dev/null/run", "model_dir")
  ... except kqreg.runs.ConfigError as e:
  ...   print(str(e).split(" cannot")[0])
  --model_dir='/dev/null/run'
  """


class TrainingInterrupted(RuntimeError):
  """SIGINT/SIGTERM stopped training; the last finished epoch is kept.

  Example:
  >>> import kqreg.runs
  >>> issubclass(kqreg.runs.TrainingInterrupted, RuntimeError)
  True
  """


def option(default=dataclasses.MISSING, *, help: str,  # pylint: disable=redefined-builtin
           default_factory=dataclasses.MISSING):
  """A config field with its command-line help (`metadata["help"]`).

  The trainers' flags take their defaults and help from the fields
  (`kqreg_trainers.flags`), so each default is written once, here or in a
  task's config class.
  """
  return dataclasses.field(default=default, default_factory=default_factory,
                           metadata={"help": help})


def default_of(config_class: type, name: str) -> Any:
  """The default of field `name` of a config dataclass (factories called)."""
  field = config_class.__dataclass_fields__[name]
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return field.default


def help_of(config_class: type, name: str) -> str:
  """The help of field `name`: the nearest class in the MRO that gives one."""
  for cls in config_class.__mro__:
    field = getattr(cls, "__dataclass_fields__", {}).get(name)
    if field is not None and "help" in field.metadata:
      return field.metadata["help"]
  return ""


def positive_int(value, allow_none: bool = False) -> bool:
  if allow_none and value is None:
    return True
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclasses.dataclass
class RunConfig:
  """The fields every task's run depends on; tasks subclass it.

  Attributes:
    model_dir: output folder; rerunning into it resumes.
    dataset: TFDS name prepared in `data_dir`, or an offline `kqreg_*` set.
    data_dir: TFDS data dir.
    bits: a `BitPolicy`, or an `auto_bits.AutoPolicy` for "auto:<budget>"
      (a string is parsed once, here).
    per_channel: None for each layer family's default.
    epochs: training epochs.
    batch_size: global batch size (split across replicas).
    learning_rate: peak learning rate.
    lr_schedule: one of `LR_SCHEDULES`.
    augment: the task's random augmentation of training images.
    train_examples: train on the first n examples (None: all).
    val_examples: validate on the first n validation examples (None: all).
    seed: seeds weights, shuffling and augmentation.
    noise_analysis: record weight noise each `noise_every` epochs.
    noise_every: epochs between noise records.
    export_tflite: write model.tflite after training and check it in LiteRT.
    strategy: one of `STRATEGIES`.
    deterministic: TensorFlow op determinism (bit-identical reruns on CPU).
    virtual_cpus: split the CPU into this many logical devices (0: don't),
      so `mirrored` can be tried on one machine.
    verbose: Keras fit verbosity (0 silent, 1 progress bar, 2 line/epoch).
    init_from: a finished float run's model dir whose trained weights
      initialize the model before quantization (same task and model).
    freeze_ranges_after: epochs of activation-range updates, after which
      the ranges stay fixed for the rest of training
      (`kqreg.qat.FreezeActivationRanges`); None: never frozen.

  Example:
  >>> import kqreg.runs
  >>> config = kqreg.runs.RunConfig(model_dir="runs/w4a8", bits="w4a8", epochs=2)
  >>> str(config.bits), config.dataset, config.lr_schedule in kqreg.runs.LR_SCHEDULES
  ('w4a8', 'kqreg_digits', True)
  >>> config.validate() is config
  True
  """
  model_dir: str = option(
      help="Run folder: training writes it (rerunning the same command "
      "resumes); kqreg-export reads it.")
  dataset: str = option(
      "kqreg_digits",
      help="TFDS dataset prepared in --data_dir, or an offline one. "
      "Classification: mnist, fashion_mnist, cifar10, ..., offline "
      "kqreg_mnist, kqreg_digits, kqreg_textures. Detection: voc/2007, "
      "voc/2012, coco/2017, offline kqreg_digit_scenes, kqreg_shapes.")
  data_dir: Optional[str] = option(
      None, help="TFDS data dir holding prepared real datasets.")
  bits: Any = option(
      "fp",
      help="Bit policy: fp, w8, w4 (weight-only), w4a8, n4 (the noise-only "
      "twin of w4), 'w4,first=w8,last=w8', 'w4a8,conv2d_3=w2,Dense=w8', ...; "
      "or auto:<budget>[:<base>] to choose bits per layer from measured "
      "noise under a budget: mean weight bits (auto:4.0), a fraction of "
      "float32 size (auto:0.15x) or weight bytes (auto:120KiB); the base "
      "policy (default w8a8) gives activation bits, first/last pins and "
      "skips, e.g. auto:3.5:w8a8,first=w8a8.")
  per_channel: Optional[bool] = option(
      None,
      help="Weight ranges per output channel: auto = per channel for conv "
      "layers, per tensor for Dense.")
  epochs: int = option(30, help="Training epochs.")
  batch_size: int = option(
      64, help="Global batch size, split across replicas.")
  learning_rate: float = option(1e-3, help="Peak learning rate.")
  lr_schedule: str = option(
      "constant", help="Learning-rate schedule over the whole run.")
  augment: bool = option(
      False,
      help="Random augmentation of training images: flip + pad-and-crop "
      "(classification) or flip + translation (detection).")
  train_examples: Optional[int] = option(
      None,
      help="Train on the first n examples only (small sets make "
      "overfitting, and so regularization, visible).")
  val_examples: Optional[int] = option(
      None, help="Evaluate on the first n validation examples only.")
  seed: int = option(
      0, help="Seed for weights, shuffling, augmentation, label noise.")
  noise_analysis: bool = option(
      True, help="Record per-layer weight noise every epoch.")
  noise_every: int = option(1, help="Epochs between noise records.")
  export_tflite: bool = option(
      False,
      help="Write model.tflite after training and verify it in LiteRT on "
      "the validation split (figures in result.json).")
  storage: str = option(
      "size",  # kqreg.export.DEFAULT_STORAGE (tested equal)
      help="Kernel storage of the exported file: size (<= 4-bit kernels "
      "packed as INT4, the smallest file), speed (each kernel in the type "
      "LiteRT runs fastest: INT8 containers of the same values for conv and "
      "depthwise kernels, INT4 for dense), auto (INT4 only where measured "
      "not slower).")
  strategy: str = option("default", help="tf.distribute strategy.")
  deterministic: bool = option(
      False, help="TensorFlow op determinism: bit-identical reruns on CPU.")
  virtual_cpus: int = option(
      0,
      help="Split the CPU into n logical devices, e.g. to try "
      "--strategy=mirrored on one machine (0: off).")
  verbose: int = option(
      2, help="Keras fit verbosity: 0 silent, 1 bar, 2 line/epoch.")
  init_from: Optional[str] = option(
      None,
      help="Model dir of a finished float (--bits=fp) run of the same "
      "model: its trained weights initialize this run before quantization "
      "(short QAT from a float checkpoint; auto: measures sensitivity on "
      "them).")
  freeze_ranges_after: Optional[int] = option(
      None,
      help="Freeze the activation ranges after this many epochs: later "
      "steps quantize on the ranges reached and skip their update (faster; "
      "training values then differ from tfmot's). Default: never.")

  # Identity fields added after run folders were written, each with what
  # such a run trained with, so that older runs still resume and are
  # skipped when finished; and those of them that change nothing without
  # activation bits. Tasks add theirs.
  IDENTITY_IF_MISSING: ClassVar[Dict[str, Any]] = {}
  IDENTITY_WITH_ACTIVATION_BITS: ClassVar[Tuple[str, ...]] = ()

  TASK: ClassVar[str] = ""
  # Fields that define what is trained: a model dir written under other
  # values cannot be resumed into. Tasks add theirs.
  IDENTITY: ClassVar[Tuple[str, ...]] = (
      "dataset", "bits", "per_channel", "train_examples", "seed",
      "batch_size", "learning_rate", "lr_schedule", "augment", "epochs",
      "init_from", "freeze_ranges_after")

  def __post_init__(self):
    self._parse_bits()

  def _parse_bits(self) -> None:
    try:
      self.bits = auto_bits.parse(self.bits)
    except policy_lib.PolicyError as e:
      raise ConfigError(f"--bits: {e}") from e

  def validate(self) -> "RunConfig":
    """Raises `ConfigError` naming the field (flag) that is wrong."""
    self._parse_bits()  # a field set after construction
    for name in ("epochs", "batch_size", "noise_every"):
      self.need(positive_int(getattr(self, name)), name,
                f"must be a positive integer, got {getattr(self, name)!r}")
    for name in ("train_examples", "val_examples", "freeze_ranges_after"):
      self.need(positive_int(getattr(self, name), allow_none=True), name,
                f"must be a positive integer, got {getattr(self, name)!r}")
    self.need(isinstance(self.learning_rate, (int, float))
              and self.learning_rate > 0, "learning_rate",
              f"must be positive, got {self.learning_rate!r}")
    self.need(self.lr_schedule in LR_SCHEDULES, "lr_schedule",
              f"unknown schedule {self.lr_schedule!r}; use one of "
              f"{', '.join(LR_SCHEDULES)}")
    self.need(self.strategy in STRATEGIES, "strategy",
              f"unknown strategy {self.strategy!r}; use one of "
              f"{', '.join(STRATEGIES)}")
    self.need(isinstance(self.virtual_cpus, int) and self.virtual_cpus >= 0,
              "virtual_cpus", f"must be >= 0, got {self.virtual_cpus!r}")
    if self.export_tflite:
      self.check_exportable()
    return self

  def identity_if_missing(self) -> Dict[str, Any]:
    """What a params.json without a field of `IDENTITY_IF_MISSING` is read
    as: its value there, or, for a field of `IDENTITY_WITH_ACTIVATION_BITS`
    and bits without activation bits, this run's value (either matches)."""
    if any(p.has_activation_bits for p in self.policies()):
      return dict(self.IDENTITY_IF_MISSING)
    return {k: getattr(self, k) if k in self.IDENTITY_WITH_ACTIVATION_BITS
            else v for k, v in self.IDENTITY_IF_MISSING.items()}

  def policies(self) -> Tuple[policy_lib.BitPolicy, ...]:
    """The policies this run may train: `bits`, or an auto policy's
    candidates."""
    if isinstance(self.bits, auto_bits.AutoPolicy):
      return tuple(self.bits.candidates())
    return (self.bits,)

  def check_exportable(self) -> None:
    """Refuses `export_tflite` for bits that export refuses, before training."""
    from kqreg import export as export_lib  # pylint: disable=g-import-not-at-top
    try:
      for policy in self.policies():
        export_lib.check_exportable(policy)
    except export_lib.ExportError as e:
      raise ConfigError(f"--export_tflite with --bits={self.bits}: {e}"
                        ) from e

  @staticmethod
  def need(ok: bool, flag: str, message: str) -> None:
    if not ok:
      raise ConfigError(f"--{flag}: {message}")

  def identity(self) -> Dict[str, Any]:
    return {k: _jsonable(getattr(self, k)) for k in self.IDENTITY}

  def to_json(self) -> Dict[str, Any]:
    return {f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)}


def _jsonable(value):
  if isinstance(value, (policy_lib.BitPolicy, auto_bits.AutoPolicy)):
    return str(value)
  return json.loads(json.dumps(value, default=list))
