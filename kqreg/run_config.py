"""The fields every run shares (`RunConfig`) and the errors of a run.

A task (`kqreg.classify`, `kqreg.detection.task`) subclasses `RunConfig`
with its own fields; `kqreg.runs.run` takes any of them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Dict, Optional, Tuple

from kqreg import auto_bits
from kqreg import policy as policy_lib

__all__ = ["RunConfig", "ConfigError", "TrainingInterrupted", "LR_SCHEDULES",
           "STRATEGIES", "positive_int"]

LR_SCHEDULES = ("constant", "cosine", "step")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class ConfigError(ValueError):
  """A run config that cannot run, with the flag to change."""


class TrainingInterrupted(RuntimeError):
  """SIGINT/SIGTERM stopped training; the last finished epoch is kept."""


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
      (`kqreg.FreezeActivationRanges`); None: never frozen.
  """
  model_dir: str
  dataset: str = "kqreg_digits"
  data_dir: Optional[str] = None
  bits: Any = "fp"
  per_channel: Optional[bool] = None
  epochs: int = 30
  batch_size: int = 64
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"
  augment: bool = False
  train_examples: Optional[int] = None
  val_examples: Optional[int] = None
  seed: int = 0
  noise_analysis: bool = True
  noise_every: int = 1
  export_tflite: bool = False
  strategy: str = "default"
  deterministic: bool = False
  virtual_cpus: int = 0
  verbose: int = 2
  init_from: Optional[str] = None
  freeze_ranges_after: Optional[int] = None

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

  def check_exportable(self) -> None:
    """Refuses `export_tflite` for bits that export refuses, before training."""
    from kqreg import export as export_lib  # pylint: disable=g-import-not-at-top
    policies = (self.bits.candidates() if isinstance(
        self.bits, auto_bits.AutoPolicy) else (self.bits,))
    try:
      for policy in policies:
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
