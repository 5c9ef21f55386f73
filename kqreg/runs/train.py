"""One run library for every task: a config in, a model dir and a result out.

`run(config)` is the same ~15 steps for classification and detection; a task
(`kqreg.classification.task`, `kqreg.detection.task`) only supplies its config fields and
the hooks of `Task`: data, model, extra callbacks, final evaluation, export.

  1. validate the config; a finished run returns its result.json
  2. identity check against the model dir's params.json (resume or refuse)
  3. seed, determinism, virtual CPUs, `tf.distribute` strategy, chief; the
     chief creates and locks the model dir (`lock`: one writer per run,
     `RunLocked` naming a live owner, a dead owner's lock taken over), and
     checks again under the lock whether the run finished meanwhile
  4. data (task hook), one validation rule (`kqreg.data.splits`),
     sharded by example under multi-worker
  5. params.json; an `auto:<budget>` policy resolved (`auto_allocation`); the
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
every task shares and the run errors are in `config`, a task's hooks in
`task`, the model dir's files in `model_dir`, strategies and signals in
`distribute`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg.mixed_precision import auto_allocation
from kqreg.mixed_precision import auto_policy as auto_bits
from kqreg import data as data_lib
from kqreg import export as export_lib
from kqreg.noise import statistics as noise_lib
from kqreg.qat import policy as policy_lib
from kqreg._tfmot import build_step_state
from kqreg.runs.callbacks import CheckedBackupAndRestore, CheckpointError, EpochCSVLogger, StopOnNaN
from kqreg.qat.ranges import FreezeActivationRanges
from kqreg.noise.callback import NoiseAnalysisCallback
from kqreg.runs.distribute import (interrupt_on_sigterm, is_chief, make_strategy,
                              shard_by_example, split_cpu)
from kqreg.runs.lock import RunLock, RunLocked
from kqreg.io_utils import atomic_write_json
from kqreg.qat.layers import quantize_scope
from kqreg.runs.config import (ConfigError,
                              RunConfig, TrainingInterrupted)
from kqreg.runs.model_dir import (finished_result, make_dir,
                           read_history, read_params, save_model,
                           val_loss_summary, write_params)
from kqreg.qat.profiles import profile
from kqreg.runs.task import Data, InitialWeights, Task, task_named

__all__ = ["BAD_INPUT_ERRORS", "callbacks_in_order", "count_examples",
           "data_errors", "initial_weights",
           "load_run", "run"]


# Every error a user fixes by changing a flag or a file: trainers exit 2 on
# them with one line.
# `RunLocked`: another live process writes the model dir (the line names it).
BAD_INPUT_ERRORS = (ConfigError, CheckpointError, data_lib.DatasetError,
                    policy_lib.PolicyError,
                    export_lib.ExportError, RunLocked)


def _task_of(config: RunConfig) -> Task:
  if not config.TASK:
    raise TypeError(f"{type(config).__name__} names no task; use a task's "
                    "config class (kqreg.classification.task.ClassifyConfig, "
                    "kqreg.detection.DetectConfig).")
  return task_named(config.TASK)


def load_run(model_dir: str) -> Tuple[Task, RunConfig, tf_keras.Model]:
  """(task, config, trained model) of a finished run folder.

  Raises:
    ConfigError: the folder holds no finished kqreg run.

  Example:
  >>> import tempfile
  >>> try:
  ...   load_run(tempfile.mkdtemp())
  ... except ConfigError:
  ...   print("not a run")
  not a run
  """
  return _load_run(model_dir, read_params(model_dir))


def _load_run(model_dir: str, params: Dict[str, Any]
              ) -> Tuple[Task, RunConfig, tf_keras.Model]:
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
  """Turns tf.data's DataLossError (truncated TFRecord) into a DatasetError.

  Example:
  >>> import tempfile
  >>> from kqreg.classification.task import ClassifyConfig
  >>> with data_errors(ClassifyConfig(model_dir=tempfile.mkdtemp(), dataset="kqreg_digits")):
  ...   pass
  """
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
  """Examples in `ds`: its cardinality, or counted when TFDS cannot tell.

  Example:
  >>> count_examples(tf.data.Dataset.range(10).filter(lambda i: i % 2 == 0))
  5
  """
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.reduce(0, lambda count, _: count + 1))


def _allocate(config: RunConfig, task: Task, data: Data,
              train: tf.data.Dataset, steps_per_epoch: int,
              initial: Optional[InitialWeights]
              ) -> Tuple[RunConfig, auto_allocation.AutoAllocation]:
  """`config` with its auto policy resolved (`auto_allocation.resolve`)."""
  float_config = dataclasses.replace(config, bits="fp")
  allocation = auto_allocation.resolve(
      config.bits, model_dir=config.model_dir,
      build_float=lambda: task.build(float_config, data, steps_per_epoch,
                                     initial=initial),
      calibration=next(iter(train)))
  return dataclasses.replace(config, bits=allocation.policy), allocation


def initial_weights(config: RunConfig) -> Optional[InitialWeights]:
  """`config.init_from`'s trained float weights, or None without `init_from`.

  Read once per run, before the task builds its model: the task gets them
  passed in (`Task.build(..., initial=...)`).

  Raises:
    ConfigError: the folder holds no finished float run of the same task.

  Example:
  >>> import tempfile
  >>> from kqreg.classification.task import ClassifyConfig
  >>> initial_weights(ClassifyConfig(model_dir=tempfile.mkdtemp(), dataset="kqreg_digits")) is None
  True
  """
  if not config.init_from:
    return None
  flag = f"--init_from={config.init_from!r}"
  params = read_params(config.init_from)
  if params["task"] != config.TASK:
    raise ConfigError(f"{flag} is a {params['task']} run, not {config.TASK}.")
  source_bits = params["config"].get("bits", "fp")
  if not policy_lib.BitPolicy.parse(source_bits).is_float:
    raise ConfigError(
        f"{flag} was trained at --bits={source_bits}; initialize from a "
        "float (--bits=fp) run.")
  _, _, source = _load_run(config.init_from, params)
  return InitialWeights(flag, source.get_weights())


def run(config: RunConfig) -> Dict[str, Any]:
  """Trains (or resumes) one run; see `_run`. Returns its result.json.

  A config validates before anything is written: a bad one raises at once.

  Example:
  >>> import tempfile
  >>> from kqreg.classification.task import ClassifyConfig
  >>> try:
  ...   run(ClassifyConfig(model_dir=tempfile.mkdtemp(), dataset="kqreg_digits", epochs=0))
  ... except ConfigError as e:
  ...   print(str(e).split(":")[0])
  --epochs
  """
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
    RunLocked: another live process writes `model_dir` (also bad input).
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
  if not chief:
    out_dir = tempfile.mkdtemp(prefix="kqreg-worker-")
    return _train(config, task, start, strategy, chief, out_dir, None)
  # One writer per model dir: the chief holds its lock to the end.
  with _model_dir_locked(config) as (lock, finished):
    if finished is not None:
      return finished
    return _train(config, task, start, strategy, chief, config.model_dir,
                  lock)


class _StopIfLockLost(tf_keras.callbacks.Callback):
  """Stops a run whose lock another process took over (it may be writing
  the run now), before this epoch reaches history.csv or the backup."""

  def __init__(self, lock: RunLock):
    super().__init__()
    self._lock = lock

  def on_epoch_end(self, epoch, logs=None):
    self._lock.check()


def _missing_folders(path: str) -> List[str]:
  """`path` and those of its parents that do not exist, deepest first."""
  missing = []
  path = os.path.abspath(path)
  while path and not os.path.exists(path):
    missing.append(path)
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return missing


@contextlib.contextmanager
def _model_dir_locked(config: RunConfig):
  """Creates and locks `config.model_dir`; yields its result if finished.

  The lock is taken before the data is read and the model built, so a
  second writer is refused at once (`RunLocked`, naming the owner) and two
  sweeps never both build the same run. The finished check is repeated
  under the lock: another process may have finished the run meanwhile. A
  run refused before params.json is written removes the folders it
  created (a refused run leaves no folder behind); a lock of a dead
  process is taken over and the run resumes from its backup.
  """
  created = _missing_folders(config.model_dir)
  make_dir(config.model_dir, "model_dir")
  lock = RunLock(config.model_dir)
  try:
    lock.acquire()
  except FileNotFoundError:  # removed by a refused run between the two
    make_dir(config.model_dir, "model_dir")
    lock.acquire()
  try:
    if lock.took_over:
      backup = os.path.join(config.model_dir, "backup")
      # A progress note, not an error: stdout, so that a refusal that
      # follows (say, a corrupt backup) is still one line on stderr.
      sys.stdout.write(
          f"kqreg: run dir {config.model_dir}: took over the lock left by "
          f"a dead writer ({lock.takeover_reason}); "
          + ("resuming from its backup" if os.path.isdir(backup) else
             "no backup: training from the start") + "\n")
      sys.stdout.flush()
    yield lock, finished_result(config.model_dir, config.identity())
  finally:
    lock.release()
    if not os.path.exists(os.path.join(config.model_dir, "params.json")):
      for folder in created:
        try:
          os.rmdir(folder)  # only while empty: never another run's files
        except OSError:
          break


def _train(config: RunConfig, task: Task, start: float, strategy, chief: bool,
           out_dir: str, lock: Optional[RunLock]) -> Dict[str, Any]:
  """`_run` from the data on, the model dir locked by `lock` (chief)."""
  with data_errors(config):
    data = task.load(config)
  pipelines = task.datasets(config, data)
  datasets = {k: shard_by_example(ds, strategy) for k, ds in pipelines.items()}
  steps_per_epoch = math.ceil(data.n_train / config.batch_size)
  # From here on `config` holds the policy the run trains; params.json keeps
  # what was asked for (an auto budget), so a rerun of the same flags resumes.
  asked, allocation = config, None
  initial = initial_weights(config)
  if isinstance(config.bits, auto_bits.AutoPolicy):
    with data_errors(config):
      config, allocation = _allocate(config, task, data,
                                     pipelines["train_eval"],
                                     steps_per_epoch, initial)
  with strategy.scope():
    model = task.build(config, data, steps_per_epoch, initial=initial)
    build_step_state(model, *task.loss_inputs(model,
                                              pipelines["train"].element_spec))
  if chief:
    # Only now, with data, policy and model in hand: a run refused before
    # this leaves no folder behind (`_model_dir_locked` removes it).
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
      task_callbacks=[*([_StopIfLockLost(lock)] if lock else []),
                      *task.callbacks(config, data), *range_freeze],
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
  if lock is not None:
    lock.check()  # never finish a run another process has taken over
  atomic_write_json(os.path.join(out_dir, "result.json"), result)
  if chief:
    shutil.rmtree(os.path.join(config.model_dir, "backup"), ignore_errors=True)
  return result
