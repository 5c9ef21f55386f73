"""One run library for every task: a config in, a model dir and a result out.

`run(config)` is the same ~15 steps for classification and detection; a task
(`kqreg.classify`, `kqreg.detection.task`) only supplies its config fields and
the hooks of `Task`: data, model, extra callbacks, final evaluation, export.

  1. validate the config; a finished run returns its result.json
  2. identity check against the model dir's params.json (resume or refuse)
  3. seed, determinism, virtual CPUs, `tf.distribute` strategy, chief
  4. data (task hook), one validation rule (`kqreg.data.splits`),
     sharded by example under multi-worker
  5. params.json; an `auto:<budget>` policy resolved (`auto_bits`); the
     model (task hook) under the strategy's scope, from `init_from`'s
     weights when given
  6. callbacks in one fixed order: StopOnNaN first, so a diverged epoch
     reaches neither history.csv nor the backup; then the task's, noise,
     history, backup, TensorBoard
  7. fit, with SIGTERM/SIGINT -> `TrainingInterrupted` and truncated data ->
     `DatasetError`
  8. evaluate (task hook), profile, noise means
  9. model.keras and result.json written atomically; optional TFLite export

Only the chief of a multi-worker cluster writes the model dir. The fields
every task shares and the run errors are in `run_config`, the model dir's
files in `run_dir`, strategies and signals in `distribute`; this module
re-exports what callers use.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
import math
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg import auto_bits
from kqreg import data as data_lib
from kqreg import export as export_lib
from kqreg import models as models_lib
from kqreg import noise as noise_lib
from kqreg import policy as policy_lib
from kqreg._tfmot import build_step_state
from kqreg.callbacks import (CheckedBackupAndRestore, CheckpointError,
                             EpochCSVLogger, FreezeActivationRanges,
                             NoiseAnalysisCallback, StopOnNaN,
                             TrainingDiverged)
from kqreg.distribute import (interrupt_on_sigterm, is_chief, make_strategy,
                              shard_by_example, split_cpu)
from kqreg.io_utils import atomic_write_json
from kqreg.quantize import quantize_scope
from kqreg.run_config import (LR_SCHEDULES, STRATEGIES, ConfigError,
                              RunConfig, TrainingInterrupted)
from kqreg.run_dir import (check_model_dir, finished_result, make_dir,
                           read_history, read_params, save_model,
                           val_loss_summary, write_params)
from kqreg.summary import profile

__all__ = ["RunConfig", "Task", "Data", "run", "load_run", "task_named",
           "ConfigError", "TrainingInterrupted", "TrainingDiverged",
           "CheckpointError", "BAD_INPUT_ERRORS", "make_strategy",
           "learning_rate_schedule", "interrupt_on_sigterm", "check_model_dir",
           "finished_result", "val_loss_summary", "read_history", "read_params",
           "is_chief", "callbacks_in_order", "data_errors", "make_dir",
           "count_examples", "initial_weights", "LR_SCHEDULES", "STRATEGIES",
           "TASKS"]

# Task name -> module holding its `TASK` (imported on demand: detection
# pulls in keras-cv).
TASKS = {"classify": "kqreg.classify", "detect": "kqreg.detection.task"}

# Every error a user fixes by changing a flag or a file: trainers exit 2 on
# them with one line.
BAD_INPUT_ERRORS = (ConfigError, CheckpointError, data_lib.DatasetError,
                    models_lib.UnknownModelError, policy_lib.PolicyError,
                    export_lib.ExportError)


@dataclasses.dataclass
class Data:
  """What a task's `load` hook returns.

  Attributes:
    train, validation, test: raw TFDS splits (`test` may be None).
    info: the task's dataset info (`num_classes`, `splits`, ...).
    splits: the TFDS split strings used (`kqreg.data.Splits`).
    n_train: training examples used (after `train_examples`).
    extra: task figures for result.json (e.g. the label-noise record).
  """
  train: tf.data.Dataset
  validation: tf.data.Dataset
  test: Optional[tf.data.Dataset]
  info: Any
  splits: Any
  n_train: int
  extra: Dict[str, Any] = dataclasses.field(default_factory=dict)


class Task(abc.ABC):
  """A task's hooks into `run`: everything else is shared."""

  name: str = ""
  config_class: type = RunConfig
  # keras-cv models refuse the graph serialization TensorBoard would do.
  write_graph: bool = True

  @abc.abstractmethod
  def load(self, config: RunConfig) -> Data:
    """The raw splits, by `kqreg.data.splits`' validation rule."""

  @abc.abstractmethod
  def datasets(self, config: RunConfig, data: Data
               ) -> Dict[str, tf.data.Dataset]:
    """Batched pipelines: `train`, `train_eval`, `val`, and `test` if any."""

  @abc.abstractmethod
  def probe(self, config: RunConfig, data: Data) -> tf.Tensor:
    """A few validation inputs for the noise callback's propagation."""

  @abc.abstractmethod
  def build(self, config: RunConfig, data: Data,
            steps_per_epoch: int) -> tf_keras.Model:
    """The compiled (quantized) model; called under the strategy's scope."""

  def loss_inputs(self, model: tf_keras.Model, element_spec: Any
                  ) -> Tuple[Any, Any]:
    """(y_true, y_pred) as the compiled loss and metrics receive them.

    Zeros for one example, so that `run` creates the train step's variables
    before its first trace (`_tfmot.build_step_state`). Default: the labels
    of `(inputs, labels)` batches and (None) the model's output.
    """
    del model
    labels = element_spec[1]
    return tf.zeros([1, *labels.shape[1:]], labels.dtype), None

  def callbacks(self, config: RunConfig, data: Data
                ) -> List[tf_keras.callbacks.Callback]:
    """Callbacks that add to the epoch logs (run before history.csv)."""
    del config, data
    return []

  @abc.abstractmethod
  def evaluate(self, model: tf_keras.Model, config: RunConfig, data: Data,
               datasets: Dict[str, tf.data.Dataset]) -> Dict[str, Any]:
    """Final figures for result.json (train/val/test losses and metrics)."""

  @abc.abstractmethod
  def export(self, model: tf_keras.Model, config: RunConfig, data: Data,
             path: str, **options) -> Dict[str, Any]:
    """Writes `path` (.tflite) and returns its checked figures."""

  # (result key, label, format) of the headline figures `summary` prints.
  headline: Tuple[Tuple[str, str, str], ...] = ()

  def summary(self, result: Dict[str, Any]) -> str:
    """The headline figures of a finished run's result, in one line."""
    return "  ".join(f"{label} {format(result[key], spec)}"
                     for key, label, spec in self.headline)

  def tflite_summary(self, figures: Dict[str, Any]) -> str:
    """One line on an exported file (`result["tflite"]`)."""
    return (f"model.tflite: {figures['size_bytes']:,} bytes "
            f"({figures['ratio_to_float']:.2f}x float)")

  def quiet(self):
    """A context in which the task's own library noise is muted."""
    return contextlib.nullcontext()

  def header(self, config: RunConfig, data: Data) -> Dict[str, Any]:
    """The first keys of result.json."""
    return {"task": self.name, "bits": str(config.bits),
            "dataset": config.dataset, "seed": config.seed,
            "epochs": config.epochs, "train_examples": data.n_train,
            "val_split": data.splits.validation}


def task_named(name: str) -> Task:
  """The `Task` registered as `name` ("classify" or "detect")."""
  if name not in TASKS:
    raise ConfigError(f"--task: unknown task {name!r}; use one of "
                      f"{', '.join(TASKS)}")
  return importlib.import_module(TASKS[name]).TASK


def _task_of(config: RunConfig) -> Task:
  if not config.TASK:
    raise TypeError(f"{type(config).__name__} names no task; use a task's "
                    "config class (kqreg.classify.ClassifyConfig, "
                    "kqreg.detection.DetectConfig).")
  return task_named(config.TASK)


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


def load_run(model_dir: str) -> Tuple[Task, RunConfig, tf_keras.Model]:
  """(task, config, trained model) of a finished run folder.

  Raises:
    ConfigError: the folder holds no finished kqreg run.
  """
  params = read_params(model_dir)
  task = task_named(params["task"])
  config = task.config_class(**params["config"])
  path = os.path.join(model_dir, "model.keras")
  if not os.path.isfile(path):
    raise ConfigError(
        f"--model_dir={model_dir!r} has no model.keras; train the run to the "
        "end first (kqreg-classify and kqreg-detect write it when they "
        "finish).")
  try:
    with quantize_scope():
      model = tf_keras.models.load_model(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path!r} cannot be loaded: {e}") from e
  return task, config, model


@contextlib.contextmanager
def data_errors(config: RunConfig):
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


def callbacks_in_order(*, out_dir: str, backup_dir: str,
                       task_callbacks: Sequence[tf_keras.callbacks.Callback],
                       noise_callback: Optional[NoiseAnalysisCallback],
                       write_graph: bool = True
                       ) -> List[tf_keras.callbacks.Callback]:
  """The one callback order of every run.

  StopOnNaN first: Keras calls `on_epoch_end` in list order, so a diverged
  epoch raises before anything logs or checkpoints it. The task's callbacks
  (e.g. per-epoch mAP) and the noise callback add to the epoch logs before
  history.csv is written. The backup is kept until result.json exists, so a
  kill during the final evaluation resumes there.
  """
  callbacks: List[tf_keras.callbacks.Callback] = [StopOnNaN(noise_callback)]
  callbacks += list(task_callbacks)
  if noise_callback is not None:
    callbacks.append(noise_callback)
  callbacks += [
      EpochCSVLogger(os.path.join(out_dir, "history.csv")),
      # Keras gives non-chief workers their own backup folders itself.
      CheckedBackupAndRestore(backup_dir, delete_checkpoint=False),
      tf_keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard"),
                                     write_graph=write_graph, profile_batch=0),
  ]
  return callbacks


def count_examples(ds: tf.data.Dataset) -> int:
  """Examples in `ds`: its cardinality, or counted when TFDS cannot tell."""
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.reduce(0, lambda count, _: count + 1))


def _allocate(config: RunConfig, task: Task, data: Data,
              train: tf.data.Dataset, steps_per_epoch: int
              ) -> Tuple[RunConfig, auto_bits.Allocation]:
  """`config` with its auto policy resolved (`kqreg.auto_bits.resolve`)."""
  float_config = dataclasses.replace(config, bits="fp")
  allocation = auto_bits.resolve(
      config.bits, model_dir=config.model_dir,
      build_float=lambda: task.build(float_config, data, steps_per_epoch),
      calibration=next(iter(train)))
  return dataclasses.replace(config, bits=allocation.policy), allocation


def initial_weights(float_model: tf_keras.Model, config: RunConfig) -> None:
  """Loads `config.init_from`'s trained float weights into `float_model`.

  Raises:
    ConfigError: the folder holds no finished float run of the same task and
      architecture.
  """
  if not config.init_from:
    return
  flag = f"--init_from={config.init_from!r}"
  params = read_params(config.init_from)
  if params["task"] != config.TASK:
    raise ConfigError(f"{flag} is a {params['task']} run, not {config.TASK}.")
  source_bits = params["config"].get("bits", "fp")
  if not policy_lib.BitPolicy.parse(source_bits).is_float:
    raise ConfigError(
        f"{flag} was trained at --bits={source_bits}; initialize from a "
        "float (--bits=fp) run.")
  _, _, source = load_run(config.init_from)
  ours = [tuple(w.shape) for w in float_model.weights]
  theirs = [tuple(w.shape) for w in source.weights]
  if ours != theirs:
    raise ConfigError(
        f"{flag} holds another architecture ({len(theirs)} weights against "
        f"{len(ours)}, or other shapes); pass a run of the same --model and "
        "--model_args on the same dataset.")
  float_model.set_weights(source.get_weights())


def run(config: RunConfig) -> Dict[str, Any]:
  """Trains (or resumes) one run; see `_run`."""
  task = _task_of(config)
  with task.quiet():
    return _run(config, task)


def _run(config: RunConfig, task: Task) -> Dict[str, Any]:
  """Trains (or resumes) one run of `config`'s task; returns result.json.

  Returns:
    The task's figures (`Task.evaluate`: train/val/test losses and metrics),
    `gap_loss` (val − train), best validation loss and its epoch, `params`,
    `quantized_params`, `weight_bytes`, `noise` (means over layers),
    `replicas`, `resumed`, `wall_time_s` and, with `export_tflite`, `tflite`.
    A finished run is not trained again: its result.json is returned with
    `skipped` set.

  Raises:
    ConfigError, DatasetError, PolicyError, ...: bad settings (see
      `BAD_INPUT_ERRORS`).
    TrainingInterrupted, TrainingDiverged, CheckpointError.
  """
  config.validate()
  finished = finished_result(config.model_dir, config.identity())
  if finished is not None:
    return finished
  start = time.time()
  if config.virtual_cpus:
    split_cpu(config.virtual_cpus)
  tf_keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  strategy = make_strategy(config.strategy)
  chief = is_chief(strategy)
  # Non-chief workers write to a scratch folder (they must still save:
  # saving runs collective ops).
  if chief:
    make_dir(config.model_dir, "model_dir")
    out_dir = config.model_dir
  else:
    out_dir = tempfile.mkdtemp(prefix="kqreg-worker-")

  with data_errors(config):
    data = task.load(config)
  pipelines = task.datasets(config, data)
  datasets = {k: shard_by_example(ds, strategy) for k, ds in pipelines.items()}
  steps_per_epoch = math.ceil(data.n_train / config.batch_size)
  # From here on `config` holds the policy the run trains; params.json keeps
  # what was asked for (an auto budget), so a rerun of the same flags resumes.
  asked, allocation = config, None
  if isinstance(config.bits, auto_bits.AutoPolicy):
    with data_errors(config):
      config, allocation = _allocate(config, task, data,
                                     pipelines["train_eval"],
                                     steps_per_epoch)
  with strategy.scope():
    model = task.build(config, data, steps_per_epoch)
    build_step_state(model, *task.loss_inputs(model,
                                              pipelines["train"].element_spec))
  if chief:
    write_params(asked)
    if allocation is not None:
      allocation.write(config.model_dir)

  noise_callback = None
  if config.noise_analysis:
    noise_callback = NoiseAnalysisCallback(
        out_dir, every_n_epochs=config.noise_every,
        probe_data=task.probe(config, data))
  range_freeze = ([FreezeActivationRanges(config.freeze_ranges_after)]
                  if config.freeze_ranges_after else [])
  callbacks = callbacks_in_order(
      out_dir=out_dir, backup_dir=os.path.join(config.model_dir, "backup"),
      task_callbacks=[*task.callbacks(config, data), *range_freeze],
      noise_callback=noise_callback, write_graph=task.write_graph)
  history_path = os.path.join(out_dir, "history.csv")
  resumed = os.path.isdir(os.path.join(config.model_dir, "backup"))
  try:
    with interrupt_on_sigterm(), data_errors(config):
      model.fit(datasets["train"], validation_data=datasets["val"],
                epochs=config.epochs, callbacks=callbacks,
                verbose=config.verbose)
  except KeyboardInterrupt as e:
    done = len(read_history(history_path))
    raise TrainingInterrupted(
        f"interrupted ({e or 'SIGINT'}) after {done} of {config.epochs} "
        f"epochs; the checkpoint of epoch {done} is kept in "
        f"{config.model_dir}/backup: rerun the same command to resume."
    ) from None

  result = task.header(config, data)
  result["bits"] = str(asked.bits)
  if allocation is not None:
    result.update(policy=str(config.bits), allocation=allocation.record)
  result.update(data.extra)
  with data_errors(config):
    result.update(task.evaluate(model, config, data, datasets))
  result["gap_loss"] = result["val_loss"] - result["train_loss"]
  history = read_history(history_path)
  result.update(val_loss_summary(history))
  result["history"] = [{k: float(v) for k, v in row.items() if v not in
                        ("", None)} for row in history]
  prof = profile(model)
  result.update(params=prof.params, quantized_params=prof.quantized_params,
                weight_bytes=prof.weight_bytes,
                noise=noise_lib.weight_noise_means(model), resumed=resumed,
                replicas=strategy.num_replicas_in_sync)
  save_model(model, out_dir)
  if config.export_tflite:
    result["tflite"] = task.export(model, config, data,
                                   os.path.join(out_dir, "model.tflite"))
  result["wall_time_s"] = round(time.time() - start, 2)
  atomic_write_json(os.path.join(out_dir, "result.json"), result)
  if chief:
    shutil.rmtree(os.path.join(config.model_dir, "backup"), ignore_errors=True)
  return result
