"""Image classification: its config fields and its hooks into `kqreg.runs`.

`run(ClassifyConfig(...))` trains (or resumes) one classifier and writes to
`model_dir`:

  params.json          the task and config (a rerun with other settings is
                       refused, naming the flag)
  history.csv          one row per epoch (train and validation loss/metrics)
  noise.csv/.jsonl     NoiseAnalysisCallback logs (when `noise_analysis`)
  tensorboard/         Keras TensorBoard logs (+ noise/ summaries)
  model.keras          the final (QAT) model; load inside kqreg.quantize_scope()
  model.tflite(.json)  with `export_tflite`, checked in LiteRT
  result.json          final figures (see `kqreg.runs.run`)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg import data as data_lib
from kqreg import export as export_lib
from kqreg.classification import models as models_lib
from kqreg.runs import config as run_config
from kqreg.runs import task as task_lib
from kqreg.runs import train as train_lib
from kqreg.qat.transform import quantize
from kqreg.qat.introspect import is_quantized

__all__ = ["ClassifyConfig", "ClassificationTask", "TASK", "run",
           "OPTIMIZERS", "PROBE_EXAMPLES"]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PROBE_EXAMPLES = 16  # validation images `noise.propagation` runs each epoch
CALIBRATION_EXAMPLES = 256  # training images calibrating a TFLite export
VERIFY_EXAMPLES = 256  # validation images the exported file is checked on


@dataclasses.dataclass
class ClassifyConfig(run_config.RunConfig):
  """Everything one classification run depends on (and `RunConfig`'s fields).

  Attributes:
    model: name in `kqreg.models.MODELS`.
    model_kwargs: overrides of the model preset.
    optimizer: one of `OPTIMIZERS`.
    weight_decay: decoupled weight decay (0 disables).
    label_noise: fraction of training labels replaced by another class
      (seeded by `seed`, recorded in result.json); validation and test
      labels stay clean.
    jit_compile: XLA-compile the train step.
    integer_attention: with activation bits, compute MultiHeadAttention as
      TFLite's int8 kernels do (`kqreg.qat.QuantizableMultiHeadAttention`);
      False keeps Keras's layer, whose scores run in float in the file.
    integer_layer_norm: with activation bits, compute LayerNormalization op
      by op with ranges (`kqreg.qat.QuantizableLayerNormalization`), so the
      file runs it in int8; False keeps Keras's layer, float in the file.
  """
  model: str = run_config.option("cnn", help="Model from the kqreg zoo.")
  model_kwargs: Dict[str, Any] = run_config.option(
      default_factory=dict,
      help="Overrides of the model preset as a Python dict literal, e.g. "
      "\"{'widths': (16, 32, 64), 'dropout': 0.1}\" (keys per model in "
      "kqreg.classification.models.MODELS).")
  optimizer: str = run_config.option("adam", help="Optimizer.")
  weight_decay: float = run_config.option(
      0.0, help="Decoupled weight decay.")
  label_noise: float = run_config.option(
      0.0,
      help="Fraction of training labels replaced by another class (seeded "
      "by --seed, recorded in result.json); validation and test stay clean.")
  jit_compile: bool = run_config.option(
      False, help="XLA-compile the training step.")
  integer_attention: bool = run_config.option(
      True,
      help="With activation bits, train MultiHeadAttention with ranges on "
      "its scores and probabilities, so the .tflite file runs it in int8 "
      "(BATCH_MATMUL, SOFTMAX: for integer-only devices). false keeps "
      "Keras's layer: the file runs its scores and softmax in float, which "
      "XNNPACK ran faster on a 2-core VM (docs/guides/export.md).")
  integer_layer_norm: bool = run_config.option(
      True,
      help="With activation bits, train LayerNormalization op by op with a "
      "range between any two ops, so the .tflite file runs it in int8 "
      "(MEAN, RSQRT, ...: for integer-only devices). false keeps Keras's "
      "layer: float in the file, which ran faster on a 2-core VM "
      "(docs/guides/export.md).")

  TASK: ClassVar[str] = "classify"
  IDENTITY: ClassVar[Tuple[str, ...]] = run_config.RunConfig.IDENTITY + (
      "model", "model_kwargs", "optimizer", "weight_decay", "label_noise",
      "integer_attention", "integer_layer_norm")
  # Before their fields, attention was swapped (with activation bits) and
  # LayerNormalization stayed Keras's; without activation bits neither is.
  IDENTITY_IF_MISSING: ClassVar[Dict[str, Any]] = {
      "integer_attention": True, "integer_layer_norm": False}
  IDENTITY_WITH_ACTIVATION_BITS: ClassVar[Tuple[str, ...]] = (
      "integer_attention", "integer_layer_norm")

  def validate(self) -> "ClassifyConfig":
    super().validate()
    self.need(self.optimizer in OPTIMIZERS, "optimizer",
              f"unknown optimizer {self.optimizer!r}; use one of "
              f"{', '.join(OPTIMIZERS)}")
    self.need(isinstance(self.weight_decay, (int, float))
              and self.weight_decay >= 0, "weight_decay",
              f"must be >= 0, got {self.weight_decay!r}")
    self.need(isinstance(self.label_noise, (int, float))
              and 0 <= self.label_noise < 1, "label_noise",
              f"must be in [0, 1), got {self.label_noise!r}")
    self.need(self.model in models_lib.MODELS, "model",
              f"unknown model {self.model!r}; use one of "
              f"{', '.join(models_lib.MODELS)}")
    self.need(isinstance(self.model_kwargs, dict), "model_args",
              f"must be a dict, got {self.model_kwargs!r}")
    return self


def _optimizer(config: ClassifyConfig, steps_per_epoch: int):
  lr = task_lib.learning_rate_schedule(config.lr_schedule, config.learning_rate,
                                   config.epochs * steps_per_epoch)
  decay = config.weight_decay or None
  if config.optimizer == "sgd":
    return tf_keras.optimizers.SGD(lr, momentum=0.9, nesterov=True,
                                   weight_decay=decay)
  if config.optimizer == "adamw":
    return tf_keras.optimizers.AdamW(lr, weight_decay=config.weight_decay or
                                     0.004)
  if config.optimizer == "rmsprop":
    return tf_keras.optimizers.RMSprop(lr, weight_decay=decay)
  return tf_keras.optimizers.Adam(lr, weight_decay=decay)


def _evaluate(model, ds, prefix: str) -> Dict[str, float]:
  values = model.evaluate(ds, verbose=0, return_dict=True)
  return {f"{prefix}_{k}": float(v) for k, v in values.items()}


def _first_batch(ds: tf.data.Dataset, n: int) -> Tuple[np.ndarray, np.ndarray]:
  x, y = next(iter(ds.unbatch().batch(n).take(1)))
  return x.numpy(), y.numpy()


class ClassificationTask(task_lib.Task):
  """Hooks of a classification run: TFDS images, zoo model, accuracy."""

  name = "classify"
  config_class = ClassifyConfig
  headline = (("train_accuracy", "train acc", ".3f"),
              ("val_accuracy", "val acc", ".3f"),
              ("val_loss", "val loss", ".3f"), ("gap_accuracy", "gap", "+.3f"))

  def load(self, config: ClassifyConfig) -> task_lib.Data:
    train, val, test, info, splits = data_lib.load_splits(
        config.dataset, config.data_dir)
    n_train = data_lib.count_examples(train)
    if config.train_examples is not None:
      if config.train_examples > n_train:
        raise run_config.ConfigError(
            f"--train_examples={config.train_examples} is larger than the "
            f"training split of {config.dataset} ({n_train} examples).")
      train, n_train = train.take(config.train_examples), config.train_examples
    if config.val_examples:
      val = val.take(config.val_examples)
    extra: Dict[str, Any] = {}
    if config.label_noise:
      train, record = data_lib.with_label_noise(
          train, config.label_noise, info.num_classes, config.seed)
      extra["label_noise"] = record
    return task_lib.Data(train, val, test, info, splits, n_train, extra)

  def datasets(self, config: ClassifyConfig, data: task_lib.Data):
    batch = config.batch_size
    out = {
        "train": data_lib.pipeline(data.train, batch_size=batch,
                                   training=True, augment=config.augment,
                                   seed=config.seed),
        # The labels the model was fit to (noisy ones with `label_noise`).
        "train_eval": data_lib.pipeline(data.train, batch_size=batch,
                                        training=False),
        "val": data_lib.pipeline(data.validation, batch_size=batch,
                                 training=False),
    }
    if data.test is not None:
      out["test"] = data_lib.pipeline(data.test, batch_size=batch,
                                      training=False)
    return out

  def probe(self, config: ClassifyConfig, data: task_lib.Data) -> tf.Tensor:
    # From an uncached pipeline: a partial read of a cached dataset leaves
    # tf.data's memory cache truncated, and validation would see 64 images.
    probe_ds = data_lib.pipeline(data.validation, batch_size=PROBE_EXAMPLES,
                                 training=False, cache=False)
    return next(iter(probe_ds))[0]

  def build(self, config: ClassifyConfig, data: task_lib.Data,
            steps_per_epoch: int, *,
            initial: Optional[task_lib.InitialWeights] = None
            ) -> tf_keras.Model:
    info = data.info
    try:
      float_model = models_lib.build(config.model, info.image_shape,
                                     info.num_classes, seed=config.seed,
                                     **config.model_kwargs)
    except models_lib.ModelOptionError as e:
      raise run_config.ConfigError(f"--model_args: {e}") from e
    if initial is not None:
      initial.apply(float_model)
    model = quantize(float_model, config.bits, per_channel=config.per_channel,
                     integer_attention=config.integer_attention,
                     integer_layer_norm=config.integer_layer_norm)
    model.compile(
        optimizer=_optimizer(config, steps_per_epoch),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], jit_compile=config.jit_compile)
    return model

  def tflite_summary(self, figures: Dict[str, Any]) -> str:
    return (f"{super().tflite_summary(figures)}, top-1 agreement "
            f"{figures['top1_agreement']:.3f}, "
            f"{figures['latency_ms_per_example']:.3f} ms/image")

  def header(self, config: ClassifyConfig, data: task_lib.Data) -> Dict[str, Any]:
    return {**super().header(config, data), "model": config.model}

  def evaluate(self, model, config, data, datasets) -> Dict[str, Any]:
    result: Dict[str, Any] = {}
    for prefix in ("train", "val", "test"):
      key = "train_eval" if prefix == "train" else prefix
      if key in datasets:
        result.update(_evaluate(model, datasets[key], prefix))
    result["gap_accuracy"] = result["train_accuracy"] - result["val_accuracy"]
    return result

  def export(self, model, config, data, path: str, *,
             verify_examples: int = VERIFY_EXAMPLES, int_io: bool = False,
             allow_activation_widening: bool = False,
             allow_float: Optional[bool] = None) -> Dict[str, Any]:
    calibration, _ = _first_batch(
        data_lib.pipeline(data.train, batch_size=CALIBRATION_EXAMPLES,
                          training=False, cache=False), CALIBRATION_EXAMPLES)
    report = export_lib.export_tflite(
        model, path, representative_data=calibration, int_io=int_io,
        allow_activation_widening=allow_activation_widening,
        allow_float=(not is_quantized(model) if allow_float is None
                     else allow_float),
        storage=getattr(config, "storage", export_lib.DEFAULT_STORAGE))
    summary = export_lib.report_summary(report)
    if not verify_examples:
      return summary
    x_val, y_val = _first_batch(
        data_lib.pipeline(data.validation, batch_size=verify_examples,
                          training=False, cache=False), verify_examples)
    check = export_lib.verify_tflite(path, model, x_val, labels=y_val)
    summary.update({k: check[k] for k in (
        "top1_agreement", "tflite_accuracy", "keras_accuracy", "max_abs_diff",
        "mean_abs_diff", "diff_units", "latency_ms_per_example", "examples")
                    if k in check})
    summary["split"] = data.splits.validation
    return summary


TASK = ClassificationTask()


def run(config: ClassifyConfig) -> Dict[str, Any]:
  """`kqreg.runs.run` for a classification config."""
  return train_lib.run(config)
