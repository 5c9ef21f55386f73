"""Classification training: a typed config in, a model dir and a stats dict out.

`run(config)` builds the data pipeline, the model and its quantized copy under
`config.bits`, trains with checkpoints that resume after an interruption
(rerun the same command), and writes to `config.model_dir`:

  params.json          the config (a rerun with other bits/model is refused)
  history.csv          one row per epoch (train and validation loss/metrics)
  noise.csv/.jsonl     NoiseAnalysisCallback logs (when `noise_analysis`)
  tensorboard/         Keras TensorBoard logs (+ noise/ summaries)
  model.keras          the final (QAT) model; load inside kqreg.quantize_scope()
  result.json          final figures (see `run`)

The trainers in `trainers/` only turn flags into a `TrainConfig`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg import data as data_lib
from kqreg import models as models_lib
from kqreg import noise as noise_lib
from kqreg import policy as policy_lib
from kqreg.callbacks import (CheckedBackupAndRestore, CheckpointError,
                             EpochCSVLogger, NoiseAnalysisCallback, StopOnNaN,
                             TrainingDiverged)
from kqreg.io_utils import atomic_write_json
from kqreg.export import export_tflite, report_summary, verify_tflite
from kqreg.quantize import is_quantized, quantize, quantize_scope
from kqreg.summary import profile

__all__ = ["TrainConfig", "ConfigError", "TrainingInterrupted",
           "interrupt_on_sigterm", "check_model_dir",
           "TrainingDiverged", "CheckpointError", "run", "make_strategy",
           "val_loss_summary", "learning_rate_schedule", "count_examples",
           "finished_result",
           "read_history",
           "OPTIMIZERS", "LR_SCHEDULES", "STRATEGIES"]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
PROBE_EXAMPLES = 16  # validation images `noise.propagation` runs each epoch
LR_SCHEDULES = ("constant", "cosine", "step")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")

# Fields that define what is trained: a model dir written under other values
# cannot be resumed into.
_IDENTITY_FIELDS = ("dataset", "model", "model_kwargs", "bits", "per_channel",
                    "train_examples", "seed", "batch_size", "optimizer",
                    "learning_rate", "lr_schedule", "weight_decay", "augment",
                    "epochs")


class ConfigError(ValueError):
  """A training config that cannot run, with the flag to change."""


class TrainingInterrupted(RuntimeError):
  """SIGINT/SIGTERM stopped training; the last finished epoch is kept."""


@contextlib.contextmanager
def interrupt_on_sigterm():
  """Turns SIGTERM into KeyboardInterrupt (as SIGINT) within the block."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def _raise(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)

  previous = signal.signal(signal.SIGTERM, _raise)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass
class TrainConfig:
  """Everything one classification run depends on.

  Attributes:
    model_dir: output folder; rerunning into it resumes.
    dataset: TFDS name (mnist, cifar10, ...) or an offline `kqreg_*` set.
    data_dir: TFDS data dir for prepared real datasets.
    model: name in `kqreg.models.MODELS`.
    model_kwargs: overrides of the model preset.
    bits: `BitPolicy` string, e.g. "fp", "w4", "w4a8,first=w8a8".
    per_channel: None for each layer family's default.
    epochs: training epochs.
    batch_size: global batch size (split across replicas).
    optimizer: one of `OPTIMIZERS`.
    learning_rate: peak learning rate.
    lr_schedule: one of `LR_SCHEDULES`.
    weight_decay: decoupled weight decay (0 disables).
    augment: random flip and pad-and-crop on training images.
    train_examples: use the first n training examples (None: all).
    seed: seeds weights, shuffling and augmentation.
    noise_analysis: record weight noise each `noise_every` epochs.
    noise_every: epochs between noise records.
    strategy: one of `STRATEGIES`.
    jit_compile: XLA-compile the train step.
    deterministic: TensorFlow op determinism (bit-identical reruns on CPU).
    export_tflite: write model.tflite after training and verify it in LiteRT
      on up to 256 validation images (figures under `tflite` in result.json).
    virtual_cpus: split the CPU into this many logical devices (0: don't), so
      `mirrored` can be tried on one machine; must come before TensorFlow
      sets up its devices.
    verbose: Keras fit verbosity (0 silent, 1 progress bar, 2 one line/epoch).
  """
  model_dir: str
  dataset: str = "kqreg_digits"
  data_dir: Optional[str] = None
  model: str = "cnn"
  model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  bits: str = "fp"
  per_channel: Optional[bool] = None
  epochs: int = 30
  batch_size: int = 64
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  lr_schedule: str = "constant"
  weight_decay: float = 0.0
  augment: bool = False
  train_examples: Optional[int] = None
  seed: int = 0
  noise_analysis: bool = True
  noise_every: int = 1
  strategy: str = "default"
  jit_compile: bool = False
  deterministic: bool = False
  virtual_cpus: int = 0
  export_tflite: bool = False
  verbose: int = 2

  def validate(self) -> "TrainConfig":
    """Raises `ConfigError` naming the field (flag) that is wrong."""

    def _need(ok, flag, message):
      if not ok:
        raise ConfigError(f"--{flag}: {message}")

    _need(isinstance(self.epochs, int) and self.epochs >= 1, "epochs",
          f"must be a positive integer, got {self.epochs!r}")
    _need(isinstance(self.batch_size, int) and self.batch_size >= 1,
          "batch_size", f"must be a positive integer, got {self.batch_size!r}")
    _need(self.learning_rate > 0, "learning_rate",
          f"must be positive, got {self.learning_rate!r}")
    _need(self.weight_decay >= 0, "weight_decay",
          f"must be >= 0, got {self.weight_decay!r}")
    _need(self.optimizer in OPTIMIZERS, "optimizer",
          f"unknown optimizer {self.optimizer!r}; use one of "
          f"{', '.join(OPTIMIZERS)}")
    _need(self.lr_schedule in LR_SCHEDULES, "lr_schedule",
          f"unknown schedule {self.lr_schedule!r}; use one of "
          f"{', '.join(LR_SCHEDULES)}")
    _need(self.strategy in STRATEGIES, "strategy",
          f"unknown strategy {self.strategy!r}; use one of "
          f"{', '.join(STRATEGIES)}")
    _need(self.train_examples is None or
          (isinstance(self.train_examples, int) and self.train_examples >= 1),
          "train_examples",
          f"must be a positive integer, got {self.train_examples!r}")
    _need(isinstance(self.noise_every, int) and self.noise_every >= 1,
          "noise_every", f"must be a positive integer, got {self.noise_every!r}")
    _need(self.model in models_lib.MODELS, "model",
          f"unknown model {self.model!r}; use one of "
          f"{', '.join(models_lib.MODELS)}")
    try:
      policy_lib.BitPolicy.parse(self.bits)
    except policy_lib.PolicyError as e:
      raise ConfigError(f"--bits: {e}") from e
    return self

  def identity(self) -> Dict[str, Any]:
    return {k: _jsonable(getattr(self, k)) for k in _IDENTITY_FIELDS}


def _jsonable(value):
  return json.loads(json.dumps(value, default=list))


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The `tf.distribute` strategy called `name` (see `STRATEGIES`)."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise ConfigError("--strategy=multi_worker reads the cluster from the "
                        "TF_CONFIG environment variable, which is not set.")
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
      raise ConfigError(f"--strategy=tpu: no TPU found ({e}).") from e
    return tf.distribute.TPUStrategy(resolver)
  raise ConfigError(f"--strategy: unknown strategy {name!r}; use one of "
                    f"{', '.join(STRATEGIES)}")


def learning_rate_schedule(name: str, learning_rate: float,
                           total_steps: int):
  """`LR_SCHEDULES[name]` over `total_steps` (a float for "constant").

  "step" divides by 10 at half and three quarters of the run.
  """
  if name == "cosine":
    return tf_keras.optimizers.schedules.CosineDecay(learning_rate,
                                                     decay_steps=total_steps)
  if name == "step":
    return tf_keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(total_steps * 0.5), int(total_steps * 0.75)],
        [learning_rate, learning_rate * 0.1, learning_rate * 0.01])
  return learning_rate


def _optimizer(config: TrainConfig, steps_per_epoch: int):
  lr = learning_rate_schedule(config.lr_schedule, config.learning_rate,
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


def check_model_dir(model_dir: str, identity: Dict[str, Any]) -> bool:
  """Checks model_dir/params.json against `identity`; True if finished.

  Raises `ConfigError` naming every flag that differs from the run already
  in `model_dir`. params.json itself is written once data and model are
  built, so a run refused for bad input leaves nothing that blocks a fixed
  rerun.
  """
  params_path = os.path.join(model_dir, "params.json")
  if os.path.exists(params_path):
    try:
      with open(params_path) as f:
        saved = json.load(f)["identity"]
    except (OSError, ValueError, KeyError) as e:
      raise ConfigError(
          f"--model_dir: {params_path} is unreadable ({e}); use a new "
          "--model_dir or delete it.") from e
    differ = [k for k in identity if saved.get(k) != identity[k]]
    if differ:
      details = ", ".join(f"--{k}={saved.get(k)!r} there, {identity[k]!r} now"
                          for k in differ)
      raise ConfigError(
          f"--model_dir {model_dir} holds a run with other settings "
          f"({details}); use a new --model_dir or the same flags.")
  return os.path.exists(os.path.join(model_dir, "result.json"))


def _write_params(config: TrainConfig) -> None:
  os.makedirs(config.model_dir, exist_ok=True)
  atomic_write_json(os.path.join(config.model_dir, "params.json"),
                    {"identity": config.identity(),
                     "config": _jsonable(dataclasses.asdict(config))})


def _evaluate(model, ds) -> Dict[str, float]:
  values = model.evaluate(ds, verbose=0, return_dict=True)
  return {k: float(v) for k, v in values.items()}


def run(config: TrainConfig) -> Dict[str, Any]:
  """Trains (or resumes) one run and returns its result dict.

  Returns:
    The contents of result.json: final `train_*`, `val_*`, `test_*` loss and
    accuracy (train figures re-evaluated without augmentation), `gap_accuracy`
    (train − val), `gap_loss` (val − train), best validation loss and its
    epoch, `params`, `quantized_params`, `noise` (mean over layers), `bits`,
    `wall_time_s`, and `resumed` (whether this call continued an earlier one).
    A finished run is not trained again: its result.json is returned.

  Raises:
    ConfigError, DatasetError, PolicyError, UnknownModelError: bad settings.
  """
  config.validate()
  finished = finished_result(config.model_dir, config.identity())
  if finished is not None:
    return finished
  start = time.time()
  if config.virtual_cpus:
    _split_cpu(config.virtual_cpus)
  tf_keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  strategy = make_strategy(config.strategy)
  # Only the chief writes the run's files; other workers write to a scratch
  # folder (they must still save, as saving runs collective ops).
  out_dir = (config.model_dir if _is_chief(strategy) else
             tempfile.mkdtemp(prefix="kqreg-worker-"))

  train_raw, val_raw, test_raw, info = _load_splits(config)
  n_train = count_examples(train_raw)
  if config.train_examples is not None and config.train_examples > n_train:
    raise ConfigError(
        f"--train_examples={config.train_examples} is larger than the "
        f"training split of {config.dataset} ({n_train} examples).")
  n_train = config.train_examples or n_train
  batch = config.batch_size
  train_ds = data_lib.pipeline(train_raw, batch_size=batch, training=True,
                               augment=config.augment, seed=config.seed,
                               take=config.train_examples)
  train_eval_ds = data_lib.pipeline(train_raw, batch_size=batch,
                                    training=False, take=config.train_examples)
  val_ds = data_lib.pipeline(val_raw, batch_size=batch, training=False)
  train_ds, train_eval_ds, val_ds = (_shard_by_example(ds, strategy)
                                     for ds in (train_ds, train_eval_ds, val_ds))
  steps_per_epoch = math.ceil(n_train / batch)

  with strategy.scope():
    try:
      float_model = models_lib.build(config.model, info.image_shape,
                                     info.num_classes, seed=config.seed,
                                     **config.model_kwargs)
    except (TypeError, ValueError) as e:
      if isinstance(e, models_lib.UnknownModelError):
        raise
      raise ConfigError(f"--model_args: {e}") from e
    model = quantize(float_model, config.bits, per_channel=config.per_channel)
    model.compile(
        optimizer=_optimizer(config, steps_per_epoch),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config.jit_compile)

  if out_dir == config.model_dir:
    _write_params(config)
  callbacks = []
  noise_callback = None
  if config.noise_analysis:
    # From an uncached pipeline: a partial read of a cached dataset leaves
    # tf.data's memory cache truncated, and validation would see 64 images.
    # 16 images: thousands of activations per layer for the norms, at a
    # fraction of an epoch's cost.
    probe_ds = data_lib.pipeline(val_raw, batch_size=PROBE_EXAMPLES,
                                 training=False, cache=False)
    probe = next(iter(probe_ds))[0]
    noise_callback = NoiseAnalysisCallback(out_dir,
                                           every_n_epochs=config.noise_every,
                                           probe_data=probe)
    callbacks.append(noise_callback)
  # First, so a diverged epoch is refused before anything logs or saves it.
  callbacks.insert(0, StopOnNaN(noise_callback))
  callbacks += [
      EpochCSVLogger(os.path.join(out_dir, "history.csv")),
      # Keras gives non-chief workers their own backup folders itself.
      # Kept until result.json is written, so a kill during the final
      # evaluation resumes there instead of training again from scratch.
      CheckedBackupAndRestore(os.path.join(config.model_dir, "backup"),
                              delete_checkpoint=False),
      tf_keras.callbacks.TensorBoard(
          os.path.join(out_dir, "tensorboard"), profile_batch=0),
  ]
  resumed = os.path.isdir(os.path.join(config.model_dir, "backup"))
  try:
    with interrupt_on_sigterm(), _corrupt_data_errors(config):
      model.fit(train_ds, validation_data=val_ds, epochs=config.epochs,
                callbacks=callbacks, verbose=config.verbose)
  except KeyboardInterrupt as e:
    done = len(read_history(os.path.join(out_dir, "history.csv")))
    raise TrainingInterrupted(
        f"interrupted ({e or 'SIGINT'}) after {done} of {config.epochs} "
        f"epochs; the checkpoint of epoch {done} is kept in "
        f"{config.model_dir}/backup: rerun the same command to resume."
    ) from None

  result: Dict[str, Any] = {"bits": config.bits, "dataset": config.dataset,
                            "model": config.model, "seed": config.seed,
                            "epochs": config.epochs, "train_examples": n_train}
  with _corrupt_data_errors(config):
    for prefix, ds in (("train", train_eval_ds), ("val", val_ds)):
      for key, value in _evaluate(model, ds).items():
        result[f"{prefix}_{key}"] = value
    if test_raw is not None:
      test_ds = _shard_by_example(
          data_lib.pipeline(test_raw, batch_size=batch, training=False),
          strategy)
      for key, value in _evaluate(model, test_ds).items():
        result[f"test_{key}"] = value
  result["gap_accuracy"] = result["train_accuracy"] - result["val_accuracy"]
  result["gap_loss"] = result["val_loss"] - result["train_loss"]
  result.update(val_loss_summary(
      read_history(os.path.join(out_dir, "history.csv"))))
  prof = profile(model)
  result.update(params=prof.params, quantized_params=prof.quantized_params,
                weight_bytes=prof.weight_bytes,
                noise=noise_lib.weight_noise_means(model), resumed=resumed,
                replicas=strategy.num_replicas_in_sync,
                wall_time_s=round(time.time() - start, 2))
  # Keras writes in place: save beside, then rename, so a kill leaves no
  # truncated model.keras.
  partial = os.path.join(out_dir, ".partial-model.keras")
  with quantize_scope():
    model.save(partial)
  os.replace(partial, os.path.join(out_dir, "model.keras"))
  if config.export_tflite:
    result["tflite"] = _export(model, out_dir, train_eval_ds, val_ds)
  atomic_write_json(os.path.join(out_dir, "result.json"), result)
  if out_dir == config.model_dir:
    shutil.rmtree(os.path.join(config.model_dir, "backup"), ignore_errors=True)
  return result


@contextlib.contextmanager
def _corrupt_data_errors(config: TrainConfig):
  """Turns tf.data's DataLossError (truncated TFRecord) into a DatasetError."""
  try:
    yield
  except tf.errors.DataLossError as e:
    detail = next((l.strip() for l in str(e).splitlines()
                   if "record" in l.lower()), str(e).splitlines()[0])
    where = config.data_dir or "the TFDS data dir"
    raise data_lib.DatasetError(
        f"a data file of {config.dataset} in {where} is corrupt ({detail}); "
        f"delete its folder {config.dataset}/ there and prepare it again "
        "(offline kqreg_* sets regenerate on the next run).") from e


def _shard_by_example(ds: tf.data.Dataset,
                      strategy: tf.distribute.Strategy) -> tf.data.Dataset:
  """Multi-worker: shard by example (offline TFDS sets are a single file)."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return ds
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return ds.with_options(options)


def _split_cpu(n: int) -> None:
  """Splits the CPU into `n` logical devices (for `mirrored` on one host)."""
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
  except RuntimeError as e:
    current = len(tf.config.list_logical_devices("CPU"))
    if current == n:
      return
    raise ConfigError(
        f"--virtual_cpus={n}: TensorFlow already set up {current} CPU "
        "device(s) in this process; pass it on the command line of a fresh "
        "process.") from e


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  resolver = strategy.cluster_resolver
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type in (None, "chief"):
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return task_type == "worker" and task_id == 0 and not has_chief


def _export(model, out_dir: str, train_ds, val_ds) -> Dict[str, Any]:
  """model.tflite from the trained model, verified against it in LiteRT."""
  calibration = next(iter(train_ds.unbatch().batch(256).take(1)))[0].numpy()
  x_val, y_val = next(iter(val_ds.unbatch().batch(256).take(1)))
  path = os.path.join(out_dir, "model.tflite")
  report = export_tflite(model, path, representative_data=calibration,
                         allow_float=not is_quantized(model))
  check = verify_tflite(path, model, x_val.numpy(), labels=y_val.numpy())
  return {
      **report_summary(report),
      **{k: check[k] for k in ("top1_agreement", "tflite_accuracy",
                               "keras_accuracy", "max_abs_diff",
                               "mean_abs_diff", "latency_ms_per_example",
                               "examples") if k in check},
  }


def _load_splits(config: TrainConfig):
  """(train, validation, test or None, info) for `config.dataset`.

  Datasets without a validation split (cifar10, mnist) hold out the last 10%
  of train for validation and keep test for the final test figures.
  """
  probe, info = data_lib.load(config.dataset, "train", data_dir=config.data_dir)
  del probe
  # Mocked metadata (tfds.testing.mock_data) knows no splits: assume test.
  has_test = "test" in info.splits or not info.splits
  if "validation" in info.splits:
    splits = ("train", "validation")
  else:
    splits = ("train[:90%]", "train[90%:]")
  train, _ = data_lib.load(config.dataset, splits[0], data_dir=config.data_dir)
  val, _ = data_lib.load(config.dataset, splits[1], data_dir=config.data_dir)
  test = (data_lib.load(config.dataset, "test", data_dir=config.data_dir)[0]
          if has_test else None)
  return train, val, test, info


def count_examples(ds: tf.data.Dataset) -> int:
  """Examples in `ds`: its cardinality, or counted when TFDS cannot tell."""
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.reduce(0, lambda count, _: count + 1))


def finished_result(model_dir: str,
                    identity: Dict[str, Any]) -> Optional[Dict[str, Any]]:
  """A finished run's result.json with `skipped` set, or None to train.

  Raises:
    ConfigError: `model_dir` holds a run with other settings
      (`check_model_dir`).
  """
  if not check_model_dir(model_dir, identity):
    return None
  with open(os.path.join(model_dir, "result.json")) as f:
    result = json.load(f)
  result["skipped"] = True
  return result


def val_loss_summary(history: List[Dict[str, str]]) -> Dict[str, Any]:
  """`best_val_loss`, `best_epoch`, `last_epoch_val_loss` of history.csv rows.

  Their difference is the overfitting a sweep compares across bit widths.
  Empty when there is no history.
  """
  if not history:
    return {}
  best = min(history, key=lambda row: float(row["val_loss"]))
  return {"best_val_loss": float(best["val_loss"]),
          "best_epoch": int(float(best["epoch"])),
          "last_epoch_val_loss": float(history[-1]["val_loss"])}


def read_history(path: str) -> List[Dict[str, str]]:
  """The rows of a run's history.csv ([] before the first epoch ends)."""
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))
