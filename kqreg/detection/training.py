"""Detection training: a typed config in, a model dir and a stats dict out.

`run(config)` builds the detection pipelines, the YOLOv8 detector quantized
under `config.bits`, trains with checkpoints that resume after an
interruption (rerun the same command), and writes to `config.model_dir`:

  params.json          the config (a rerun with other settings is refused)
  history.csv          one row per epoch: loss, box_loss, class_loss, their
                       val_ twins, val_map50 / val_map on a validation subset
  noise.csv/.jsonl     NoiseAnalysisCallback logs (when `noise_analysis`)
  tensorboard/         Keras TensorBoard logs
  model.keras          the trained detector; `tf_keras.models.load_model`
                       rebuilds it (after `import kqreg.detection`)
  model.tflite(.json)  with `export_tflite`: the network as TFLite and its
                       export report, checked in LiteRT (`export_detector`)
  result.json          final figures (see `run`)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any, Dict, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg import noise as noise_lib
from kqreg import policy as policy_lib
from kqreg.callbacks import (CheckedBackupAndRestore, EpochCSVLogger,
                             NoiseAnalysisCallback, StopOnNaN)
from kqreg.detection import data as data_lib
from kqreg.detection import export as export_lib
from kqreg.detection import metrics as metrics_lib
from kqreg.detection import model as model_lib
from kqreg.io_utils import atomic_write_json
from kqreg.summary import profile
from kqreg.training import (ConfigError, TrainingInterrupted,
                            interrupt_on_sigterm, make_strategy,
                            finished_result, val_loss_summary,
                            learning_rate_schedule, LR_SCHEDULES,
                            count_examples, read_history)

__all__ = ["DetectConfig", "ConfigError", "TrainingInterrupted", "MapCallback",
           "run"]

PROBE_EXAMPLES = 8  # validation images the noise propagation probe runs
CALIBRATION_EXAMPLES = 128  # training images calibrating a TFLite export
EXPORT_CHECK_EXAMPLES = 64  # validation images the exported file is run on
_IDENTITY_FIELDS = ("dataset", "backbone", "bits", "per_channel", "image_size",
                    "fpn_depth", "max_boxes", "train_examples", "seed",
                    "batch_size", "learning_rate", "lr_schedule", "augment",
                    "epochs")


@dataclasses.dataclass
class DetectConfig:
  """Everything one detection run depends on.

  Attributes:
    model_dir: output folder; rerunning into it resumes.
    dataset: TFDS detection dataset (voc/2007, voc/2012, coco/2017) prepared
      in `data_dir`, or the offline `kqreg_shapes`.
    data_dir: TFDS data dir.
    backbone: YOLOv8 backbone size, one of `model.BACKBONES`.
    bits: `BitPolicy` string, e.g. "fp", "w8", "w4", "w4a8".
    per_channel: None for each layer family's default.
    image_size: square input size, a multiple of 32.
    fpn_depth: depth of the FPN's CSP blocks.
    max_boxes: boxes kept per image (padding of the dense box tensors).
    epochs: training epochs.
    batch_size: global batch size.
    learning_rate: Adam learning rate (global gradient norm clipped at 10).
    lr_schedule: one of `LR_SCHEDULES`.
    augment: random flip and translation of training images.
    train_examples: train on the first n examples (None: all).
    val_examples: evaluate on the first n validation examples (None: all).
    map_examples: validation images for the per-epoch mAP (0: no per-epoch
      mAP); the final mAP uses `val_examples`.
    seed: seeds weights, shuffling and augmentation.
    noise_analysis: record weight noise each `noise_every` epochs.
    noise_every: epochs between noise records.
    export_tflite: write model.tflite after training and check it in LiteRT
      (figures under `tflite` in result.json).
    strategy: `kqreg.training.STRATEGIES` name.
    verbose: Keras fit verbosity.
  """
  model_dir: str
  dataset: str = "kqreg_shapes"
  data_dir: Optional[str] = None
  backbone: str = "xs"
  bits: str = "fp"
  per_channel: Optional[bool] = None
  image_size: int = 64
  fpn_depth: int = 1
  max_boxes: int = 32
  epochs: int = 10
  batch_size: int = 16
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"
  augment: bool = True
  train_examples: Optional[int] = None
  val_examples: Optional[int] = None
  map_examples: int = 64
  seed: int = 0
  noise_analysis: bool = True
  noise_every: int = 1
  export_tflite: bool = False
  strategy: str = "default"
  verbose: int = 2

  def validate(self) -> "DetectConfig":
    """Raises `ConfigError` naming the field (flag) that is wrong."""

    def _need(ok, flag, message):
      if not ok:
        raise ConfigError(f"--{flag}: {message}")

    def _positive(value, allow_none=False):
      if allow_none and value is None:
        return True
      return (isinstance(value, int) and not isinstance(value, bool)
              and value >= 1)

    for name in ("epochs", "batch_size", "max_boxes", "noise_every",
                 "fpn_depth"):
      _need(_positive(getattr(self, name)), name,
            f"must be a positive integer, got {getattr(self, name)!r}")
    for name in ("train_examples", "val_examples"):
      _need(_positive(getattr(self, name), allow_none=True), name,
            f"must be a positive integer, got {getattr(self, name)!r}")
    _need(isinstance(self.map_examples, int) and self.map_examples >= 0,
          "map_examples", f"must be >= 0, got {self.map_examples!r}")
    _need(self.learning_rate > 0, "learning_rate",
          f"must be positive, got {self.learning_rate!r}")
    _need(self.lr_schedule in LR_SCHEDULES, "lr_schedule",
          f"unknown schedule {self.lr_schedule!r}; use one of "
          f"{', '.join(LR_SCHEDULES)}")
    _need(self.backbone in model_lib.BACKBONES, "backbone",
          f"unknown backbone {self.backbone!r}; use one of "
          f"{', '.join(model_lib.BACKBONES)}")
    _need(isinstance(self.image_size, int) and self.image_size >= 32
          and self.image_size % model_lib.SIZE_MULTIPLE == 0, "image_size",
          f"must be a multiple of {model_lib.SIZE_MULTIPLE} (>= 32), got "
          f"{self.image_size!r}; e.g. 64 or 96")
    try:
      policy = policy_lib.BitPolicy.parse(self.bits)
    except policy_lib.PolicyError as e:
      raise ConfigError(f"--bits: {e}") from e
    every = [policy.default, policy.first, policy.last] + [
        b for _, b in policy.names + policy.types]
    _need(not (self.export_tflite and any(
        b is not None and b.activation is not None for b in every)),
          "export_tflite", f"--bits={self.bits} quantizes activations, and a "
          "trained YOLOv8 with activation quantizers does not convert to "
          "TFLite (keras-cv's FPN concatenations need one shared range; see "
          "kqreg.detection.export). Use weight-only bits such as w8 or w4, "
          "or drop --export_tflite.")
    return self

  def identity(self) -> Dict[str, Any]:
    return {k: json.loads(json.dumps(getattr(self, k)))
            for k in _IDENTITY_FIELDS}


class MapCallback(tf_keras.callbacks.Callback):
  """Adds `val_map50` and `val_map` to the epoch logs (before CSV logging).

  Epochs it skips (see `every_n_epochs`) log NaN, so history.csv keeps one
  set of columns.
  """

  def __init__(self, ds: tf.data.Dataset, num_classes: int,
               every_n_epochs: int = 1):
    super().__init__()
    self.ds, self.num_classes, self.every = ds, num_classes, every_n_epochs

  def on_epoch_end(self, epoch, logs=None):
    if logs is None:
      return
    if (epoch + 1) % self.every == 0:
      values = metrics_lib.evaluate_map(self.model, self.ds, self.num_classes)
    else:
      values = {"map50": float("nan"), "map": float("nan")}
    logs["val_map50"] = values["map50"]
    logs["val_map"] = values["map"]


def _splits(config: DetectConfig):
  train, info = data_lib.load_detection(config.dataset, "train",
                                        config.data_dir)
  val_split = data_lib.validation_split(info)
  val, _ = data_lib.load_detection(config.dataset, val_split, config.data_dir)
  return train, val, val_split, info


def _save_model(model: tf_keras.Model, model_dir: str) -> None:
  partial = os.path.join(model_dir, ".partial-model.keras")
  model.save(partial)
  os.replace(partial, os.path.join(model_dir, "model.keras"))


def run(config: DetectConfig) -> Dict[str, Any]:
  """Trains (or resumes) one detection run and returns its result dict.

  Returns:
    The contents of result.json: final `train_*` (first `train_examples`
    images, no augmentation) and `val_*` loss, box_loss and class_loss,
    `val_map50` (mAP@0.5) and `val_map` (mAP@[0.5:0.95], COCO-style, see
    `metrics`) on the validation split, `gap_loss` (val − train),
    `best_val_loss`/`best_epoch`/`last_epoch_val_loss`, the per-epoch
    history, `params`, `quantized_params`, `noise`, `bits`, `wall_time_s`, `resumed` and, with
    `export_tflite`, `tflite` (`export.export_detector`'s figures). A
    finished run is not trained again: its result.json is returned.

  Raises:
    ConfigError, DatasetError, DetectorError, PolicyError: bad settings.
    TrainingInterrupted, TrainingDiverged, CheckpointError.
  """
  config.validate()
  finished = finished_result(config.model_dir, config.identity())
  if finished is not None:
    return finished
  start = time.time()
  tf_keras.utils.set_random_seed(config.seed)
  strategy = make_strategy(config.strategy)
  train_raw, val_raw, val_split, info = _splits(config)
  n_train = count_examples(train_raw.take(config.train_examples)
                   if config.train_examples else train_raw)
  if config.train_examples is not None and config.train_examples > n_train:
    raise ConfigError(
        f"--train_examples={config.train_examples} is larger than the "
        f"training split of {config.dataset} ({n_train} examples).")
  common = dict(image_size=config.image_size, batch_size=config.batch_size,
                max_boxes=config.max_boxes)
  train_ds = data_lib.pipeline(train_raw, training=True,
                               augment=config.augment, seed=config.seed,
                               take=config.train_examples, **common)
  train_eval_ds = data_lib.pipeline(train_raw, training=False,
                                    take=config.train_examples, **common)
  val_ds = data_lib.pipeline(val_raw, training=False,
                             take=config.val_examples, **common)

  with strategy.scope():
    model = model_lib.build_detector(
        info.num_classes, config.backbone, config.bits, config.image_size,
        fpn_depth=config.fpn_depth, per_channel=config.per_channel)
    lr = learning_rate_schedule(
        config.lr_schedule, config.learning_rate,
        config.epochs * math.ceil(n_train / config.batch_size))
    model.compile(box_loss="ciou", classification_loss="binary_crossentropy",
                  optimizer=tf_keras.optimizers.Adam(lr, global_clipnorm=10.0),
                  jit_compile=False)

  os.makedirs(config.model_dir, exist_ok=True)
  atomic_write_json(os.path.join(config.model_dir, "params.json"),
                    {"identity": config.identity(),
                     "config": json.loads(json.dumps(
                         dataclasses.asdict(config)))})
  callbacks = []
  if config.map_examples:
    # Uncached: a partial read of a cached dataset would truncate its cache.
    map_ds = data_lib.pipeline(val_raw, training=False,
                               take=config.map_examples, cache=False, **common)
    callbacks.append(MapCallback(map_ds, info.num_classes))
  noise_callback = None
  if config.noise_analysis:
    probe_ds = data_lib.pipeline(val_raw, training=False, cache=False,
                                 take=PROBE_EXAMPLES,
                                 image_size=config.image_size,
                                 batch_size=PROBE_EXAMPLES,
                                 max_boxes=config.max_boxes)
    probe = next(iter(probe_ds))["images"]
    noise_callback = NoiseAnalysisCallback(config.model_dir,
                                           every_n_epochs=config.noise_every,
                                           probe_data=probe)
    callbacks.append(noise_callback)
  history_path = os.path.join(config.model_dir, "history.csv")
  callbacks += [
      EpochCSVLogger(history_path),
      CheckedBackupAndRestore(os.path.join(config.model_dir, "backup"),
                              delete_checkpoint=False),
      StopOnNaN(noise_callback),
      # write_graph would serialize the model, which this subclass refuses.
      tf_keras.callbacks.TensorBoard(os.path.join(config.model_dir,
                                                  "tensorboard"),
                                     write_graph=False, profile_batch=0),
  ]
  resumed = os.path.isdir(os.path.join(config.model_dir, "backup"))
  try:
    with interrupt_on_sigterm():
      model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                callbacks=callbacks, verbose=config.verbose)
  except KeyboardInterrupt as e:
    done = len(read_history(history_path))
    raise TrainingInterrupted(
        f"interrupted ({e or 'SIGINT'}) after {done} of {config.epochs} "
        f"epochs; the checkpoint of epoch {done} is kept in "
        f"{config.model_dir}/backup: rerun the same command to resume."
    ) from None

  result: Dict[str, Any] = {
      "bits": config.bits, "dataset": config.dataset,
      "backbone": config.backbone, "image_size": config.image_size,
      "seed": config.seed, "epochs": config.epochs,
      "train_examples": n_train, "val_split": val_split}
  for prefix, ds in (("train", train_eval_ds), ("val", val_ds)):
    values = model.evaluate(ds, verbose=0, return_dict=True)
    for key, value in values.items():
      result[f"{prefix}_{key}"] = float(value)
  final_map = metrics_lib.evaluate_map(model, val_ds, info.num_classes)
  result["val_map50"], result["val_map"] = final_map["map50"], final_map["map"]
  result["val_examples"] = count_examples(val_raw.take(config.val_examples)
                                  if config.val_examples else val_raw)
  history = read_history(history_path)
  result["gap_loss"] = result["val_loss"] - result["train_loss"]
  result.update(val_loss_summary(history))
  result["history"] = [{k: float(v) for k, v in row.items()
                        if k in ("epoch", "loss", "box_loss", "class_loss",
                                 "val_loss", "val_map50", "val_map")}
                       for row in history]
  prof = profile(model)
  result.update(params=prof.params, quantized_params=prof.quantized_params,
                weight_bytes=prof.weight_bytes,
                noise=noise_lib.weight_noise_means(model), resumed=resumed)
  if config.export_tflite:
    calibration = next(iter(train_eval_ds.unbatch().batch(
        CALIBRATION_EXAMPLES).take(1)))["images"].numpy()
    check_ds = data_lib.pipeline(
        val_raw, training=False, cache=False,
        take=min(EXPORT_CHECK_EXAMPLES,
                 config.val_examples or EXPORT_CHECK_EXAMPLES), **common)
    result["tflite"] = export_lib.export_detector(
        model, os.path.join(config.model_dir, "model.tflite"), calibration,
        check_ds, info.num_classes)
  _save_model(model, config.model_dir)
  result["wall_time_s"] = round(time.time() - start, 2)
  atomic_write_json(os.path.join(config.model_dir, "result.json"), result)
  shutil.rmtree(os.path.join(config.model_dir, "backup"), ignore_errors=True)
  return result
