"""One run library for every task: a config in, a model dir and a result out.

`run(config)` is the same ~15 steps for classification and detection; a task
(`kqreg.classification.task`, `kqreg.detection.task`) only supplies its config fields and
the hooks of `Task`: data, model, extra callbacks, final evaluation, export.

  1. validate the config; a finished run returns its result.json
  2. identity check against the model dir's params.json (resume or refuse)
  3. seed, determinism, virtual CPUs, `tf.distribute` strategy, chief
     (`distribute.set_up_process`); the chief claims the model dir
     (`model_dir.claim`: created and locked, one writer per run,
     `RunLocked` naming a live owner, a dead owner's lock taken over), and
     checks again under the lock whether the run finished meanwhile
  4. data (task hook), one validation rule (`kqreg.data.splits`),
     sharded by example under multi-worker
  5. params.json; an `auto:<budget>` policy resolved (`auto_allocation`); the
     model (task hook) under the strategy's scope, from `init_from`'s
     weights when given
  6. callbacks in one fixed order (`callbacks.callbacks_in_order`): StopOnNaN
     first, so a diverged epoch reaches neither history.csv nor the backup;
     then the task's, noise, history, backup, TensorBoard
  7. fit, with SIGTERM/SIGINT -> `TrainingInterrupted` and truncated data ->
     `DatasetError`
  8. evaluate (task hook), profile, noise means
  9. model.keras and result.json written atomically; optional TFLite export

Only the chief of a multi-worker cluster writes the model dir. The fields
every task shares and the run errors are in `config`, a task's hooks in
`task`, the model dir's files, its claim and a finished run read back
(`load_run`, `initial_weights`) in `model_dir`, strategies and signals in
`distribute`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from kqreg import data as data_lib
from kqreg import export as export_lib
from kqreg._tfmot import build_step_state
from kqreg.io_utils import atomic_write_json
from kqreg.mixed_precision import auto_allocation
from kqreg.mixed_precision import auto_policy as auto_bits
from kqreg.noise import statistics as noise_lib
from kqreg.noise.callback import NoiseAnalysisCallback
from kqreg.qat import policy as policy_lib
from kqreg.qat.profiles import profile
from kqreg.qat.ranges import FreezeActivationRanges
from kqreg.runs.callbacks import (CheckpointError, StopIfLockLost,
                                  callbacks_in_order)
from kqreg.runs.config import ConfigError, RunConfig, TrainingInterrupted
from kqreg.runs.distribute import (interrupt_on_sigterm, set_up_process,
                                   shard_by_example)
from kqreg.runs.lock import RunLock, RunLocked
from kqreg.runs.model_dir import (claim, finished_result, initial_weights,
                                  read_history, save_model, val_loss_summary,
                                  write_params)
from kqreg.runs.task import Data, InitialWeights, Task, task_named

__all__ = ["BAD_INPUT_ERRORS", "data_errors", "run"]


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
  finished = finished_result(config)
  if finished is not None:
    return finished
  start = time.time()
  strategy, chief = set_up_process(
      virtual_cpus=config.virtual_cpus, seed=config.seed,
      deterministic=config.deterministic, strategy=config.strategy)
  # Non-chief workers write to a scratch folder (they must still save:
  # saving runs collective ops).
  if not chief:
    out_dir = tempfile.mkdtemp(prefix="kqreg-worker-")
    return _train(config, task, start, strategy, chief, out_dir, None)
  # One writer per model dir: the chief holds its lock to the end.
  with claim(config.model_dir) as lock:
    # Again under the lock: another process may have finished it meanwhile.
    finished = finished_result(config)
    if finished is not None:
      return finished
    return _train(config, task, start, strategy, chief, config.model_dir,
                  lock)


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
    # this leaves no folder behind (`model_dir.claim` removes it).
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
      task_callbacks=[*([StopIfLockLost(lock)] if lock else []),
                      *task.callbacks(config, data, pipelines),
                      *range_freeze],
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
