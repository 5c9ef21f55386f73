"""Object detection: its config fields and its hooks into `kqreg.runs`.

`run(DetectConfig(...))` trains (or resumes) one quantization-aware YOLOv8
detector and writes to `model_dir`:

  params.json          the task and config (a rerun with other settings is
                       refused)
  history.csv          one row per epoch: loss, box_loss, class_loss, their
                       val_ twins, val_map50 / val_map on a validation subset
  noise.csv/.jsonl     NoiseAnalysisCallback logs (when `noise_analysis`)
  tensorboard/         Keras TensorBoard logs
  model.keras          the trained detector; `tf_keras.models.load_model`
                       rebuilds it (after `import kqreg.detection`)
  model.tflite(.json)  with `export_tflite`: the network as TFLite and its
                       export report, checked in LiteRT (`export_detector`)
  result.json          final figures (see `kqreg.runs.run`; plus mAP, and
                       AP per class by name: `val_ap50_per_class`,
                       `val_ap_per_class`)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Tuple, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg import data as data_lib
from kqreg.runs import config as run_config
from kqreg.runs import task as task_lib
from kqreg.runs import train as train_lib
from kqreg.detection import data as detection_data
from kqreg.detection import export as export_lib
from kqreg.detection import metrics as metrics_lib
from kqreg.detection import model as model_lib

__all__ = ["DetectConfig", "DetectionTask", "MapCallback", "TASK", "run"]

PROBE_EXAMPLES = 8  # validation images the noise propagation probe runs
CALIBRATION_EXAMPLES = 128  # training images calibrating a TFLite export
EXPORT_CHECK_EXAMPLES = 64  # validation images the exported file is run on


@dataclasses.dataclass
class DetectConfig(run_config.RunConfig):
  """Everything one detection run depends on (and `RunConfig`'s fields).

  Attributes:
    dataset: TFDS detection dataset (voc/2007, voc/2012, coco/2017) prepared
      in `data_dir`, or the offline `kqreg_shapes` or `kqreg_digit_scenes`
      (the latter is never flipped in augmentation).
    backbone: YOLOv8 backbone size, one of `model.BACKBONES`.
    image_size: square input size, a multiple of 32.
    fpn_depth: depth of the FPN's CSP blocks.
    max_boxes: boxes kept per image (padding of the dense box tensors).
    bn_momentum: BatchNormalization momentum of the detector
      (`model.SHORT_RUN_BN_MOMENTUM`).
    map_examples: validation images for the per-epoch mAP (0: no per-epoch
      mAP); the final mAP uses `val_examples`.
    learning_rate: Adam learning rate (global gradient norm clipped at 10).
    augment: random flip and translation of training images.
  """
  dataset: str = "kqreg_shapes"
  epochs: int = 10
  batch_size: int = 16
  augment: bool = True
  backbone: str = run_config.option("xs", help="YOLOv8 backbone size.")
  image_size: int = run_config.option(
      64, help="Square input size, a multiple of 32.")
  fpn_depth: int = run_config.option(
      1, help="Depth of the FPN's CSP blocks.")
  max_boxes: int = run_config.option(32, help="Boxes kept per image.")
  bn_momentum: float = run_config.option(
      model_lib.SHORT_RUN_BN_MOMENTUM,
      help="BatchNormalization momentum (keras-cv's is 0.97, which needs "
      "~400 steps to forget its initial statistics).")
  map_examples: int = run_config.option(
      64, help="Validation images for the per-epoch mAP (0: off).")

  TASK: ClassVar[str] = "detect"
  IDENTITY: ClassVar[Tuple[str, ...]] = run_config.RunConfig.IDENTITY + (
      "backbone", "image_size", "fpn_depth", "max_boxes", "bn_momentum")

  def validate(self) -> "DetectConfig":
    super().validate()
    self.need(isinstance(self.bn_momentum, (int, float)) and
              not isinstance(self.bn_momentum, bool) and
              0.0 <= self.bn_momentum < 1.0, "bn_momentum",
              f"must be in [0, 1), got {self.bn_momentum!r}")
    for name in ("max_boxes", "fpn_depth"):
      self.need(run_config.positive_int(getattr(self, name)), name,
                f"must be a positive integer, got {getattr(self, name)!r}")
    self.need(isinstance(self.map_examples, int) and self.map_examples >= 0,
              "map_examples", f"must be >= 0, got {self.map_examples!r}")
    self.need(self.init_from is None, "init_from",
              "detection runs cannot start from a float run yet; drop it.")
    self.need(self.backbone in model_lib.BACKBONES, "backbone",
              f"unknown backbone {self.backbone!r}; use one of "
              f"{', '.join(model_lib.BACKBONES)}")
    self.need(isinstance(self.image_size, int) and self.image_size >= 32
              and self.image_size % model_lib.SIZE_MULTIPLE == 0,
              "image_size",
              f"must be a multiple of {model_lib.SIZE_MULTIPLE} (>= 32), got "
              f"{self.image_size!r}; e.g. 64 or 96")
    return self


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


def _pipeline(config: DetectConfig, ds, **kwargs) -> tf.data.Dataset:
  kwargs.setdefault("batch_size", config.batch_size)
  return detection_data.pipeline(ds, image_size=config.image_size,
                                 max_boxes=config.max_boxes, **kwargs)


class DetectionTask(task_lib.Task):
  """Hooks of a detection run: TFDS boxes, keras-cv YOLOv8, mAP."""

  name = "detect"
  config_class = DetectConfig
  headline = (("train_loss", "train loss", ".3f"), ("val_loss", "val loss", ".3f"),
              ("val_map50", "mAP@0.5", ".3f"), ("val_map", "mAP@[.5:.95]", ".3f"))
  write_graph = False  # the detector subclass refuses graph serialization

  def load(self, config: DetectConfig) -> task_lib.Data:
    train, info = detection_data.load_detection(config.dataset, "train",
                                                config.data_dir)
    splits = data_lib.splits(info)
    train, _ = detection_data.load_detection(config.dataset, splits.train,
                                             config.data_dir)
    val, _ = detection_data.load_detection(config.dataset, splits.validation,
                                           config.data_dir)
    if config.val_examples:
      val = val.take(config.val_examples)
    n_train = data_lib.count_examples(train.take(config.train_examples)
                                  if config.train_examples else train)
    if config.train_examples is not None:
      if config.train_examples > n_train:
        raise run_config.ConfigError(
            f"--train_examples={config.train_examples} is larger than the "
            f"training split of {config.dataset} ({n_train} examples).")
      train = train.take(config.train_examples)
    return task_lib.Data(train, val, None, info, splits, n_train)

  def datasets(self, config: DetectConfig, data: task_lib.Data):
    pipelines = {
        "train": _pipeline(config, data.train, training=True,
                           augment=config.augment, flip=data.info.flip,
                           seed=config.seed),
        "train_eval": _pipeline(config, data.train, training=False),
        "val": _pipeline(config, data.validation, training=False),
    }
    if config.map_examples:
      # MapCallback's. Uncached: a partial read of a cached dataset would
      # truncate its cache.
      pipelines["map"] = _pipeline(config, data.validation, training=False,
                                   take=config.map_examples, cache=False)
    return pipelines

  def probe(self, config: DetectConfig, data: task_lib.Data) -> tf.Tensor:
    probe_ds = _pipeline(config, data.validation, training=False,
                         cache=False, take=PROBE_EXAMPLES,
                         batch_size=PROBE_EXAMPLES)
    return next(iter(probe_ds))["images"]

  def build(self, config: DetectConfig, data: task_lib.Data,
            steps_per_epoch: int, *,
            initial: Optional[task_lib.InitialWeights] = None
            ) -> tf_keras.Model:
    del initial  # refused by `validate`
    model = model_lib.build_detector(
        data.info.num_classes, config.backbone, config.bits,
        config.image_size, fpn_depth=config.fpn_depth,
        per_channel=config.per_channel, bn_momentum=config.bn_momentum)
    lr = task_lib.learning_rate_schedule(config.lr_schedule, config.learning_rate,
                                     config.epochs * steps_per_epoch)
    model.compile(box_loss="ciou", classification_loss="binary_crossentropy",
                  optimizer=tf_keras.optimizers.Adam(lr, global_clipnorm=10.0),
                  jit_compile=False)
    return model

  def loss_inputs(self, model, element_spec):
    del element_spec
    # keras-cv's compute_loss hands the compiled loss these two, by name; the
    # detector has no compiled metrics.
    return None, {"box": tf.zeros([1, 1, 4]),
                  "class": tf.zeros([1, 1, model.num_classes])}

  def callbacks(self, config: DetectConfig, data: task_lib.Data, pipelines):
    if "map" not in pipelines:
      return []
    return [MapCallback(pipelines["map"], data.info.num_classes)]

  def quiet(self):
    return model_lib.quiet_keras_cv_warnings()

  def tflite_summary(self, figures: Dict[str, Any]) -> str:
    return (f"{super().tflite_summary(figures)}; on {figures['examples']} "
            f"validation images mAP@0.5 {figures['tflite_map50']:.3f} in "
            f"LiteRT vs {figures['keras_map50']:.3f} in Keras, "
            f"{figures['latency_ms_per_example']:.2f} ms/image")

  def header(self, config: DetectConfig, data: task_lib.Data) -> Dict[str, Any]:
    return {**super().header(config, data), "backbone": config.backbone,
            "image_size": config.image_size}

  def evaluate(self, model, config, data, datasets) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for prefix, key in (("train", "train_eval"), ("val", "val")):
      values = model.evaluate(datasets[key], verbose=0, return_dict=True)
      result.update({f"{prefix}_{k}": float(v) for k, v in values.items()})
    final_map = metrics_lib.evaluate_map(model, datasets["val"],
                                         data.info.num_classes)
    result["val_map50"], result["val_map"] = (final_map["map50"],
                                              final_map["map"])
    # Per class by name; null for a class without validation objects (JSON
    # has no NaN).
    for key in ("ap50_per_class", "ap_per_class"):
      result[f"val_{key}"] = {
          name: (None if np.isnan(v) else v)
          for name, v in zip(data.info.class_names, final_map[key])}
    result["val_examples"] = data_lib.count_examples(data.validation)
    return result

  def export(self, model, config, data, path: str, *,
             verify_examples: int = EXPORT_CHECK_EXAMPLES,
             **options) -> Dict[str, Any]:
    # A detector's integer export needs no other option: an aN detector's
    # activation ranges come from QAT, a weight-only one's are calibrated
    # on the training images.
    if options:
      raise run_config.ConfigError(
          f"{', '.join('--' + k for k in options)} apply to classification "
          "exports only; drop them for a detection run.")
    calibration = np.concatenate([
        batch["images"].numpy() for batch in _pipeline(
            config, data.train, training=False, cache=False,
            take=CALIBRATION_EXAMPLES)])
    check_ds = _pipeline(config, data.validation, training=False, cache=False,
                         take=max(1, verify_examples))
    figures = export_lib.export_detector(
        model, path, calibration, check_ds, data.info.num_classes,
        storage=getattr(config, "storage", "size"))
    figures["split"] = data.splits.validation
    return figures


TASK = DetectionTask()


def run(config: DetectConfig) -> Dict[str, Any]:
  """`kqreg.runs.run` for a detection config."""
  return train_lib.run(config)
