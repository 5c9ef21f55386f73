"""A run's own callbacks: stop on NaN, a backup that refuses bad checkpoints, the epoch CSV.

`callbacks_in_order` puts every run's callbacks in its one order. `StopOnNaN` goes first in a run's callback list, so a diverged epoch reaches
neither history.csv nor the backup; `CheckedBackupAndRestore` turns a corrupt
or foreign checkpoint into `CheckpointError` (a one-line trainer error);
`EpochCSVLogger` appends one fsynced row per epoch and, on resume, drops the
rows of epochs the backup does not hold, so each epoch appears once.
`StopIfLockLost` stops a run whose model dir another process took over.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg.io_utils import append_csv_rows, truncate_csv_at_epoch
from kqreg.noise.callback import NoiseAnalysisCallback


__all__ = [
    "callbacks_in_order",
    "EpochCSVLogger",
    "StopIfLockLost",
    "StopOnNaN",
    "TrainingDiverged",
    "CheckedBackupAndRestore",
    "CheckpointError",
]


class TrainingDiverged(ArithmeticError):
  """The loss became NaN or Inf; `epoch` and `step` say where.

  Example:
  >>> e = TrainingDiverged(3, 17, "loss is NaN at epoch 3, step 17")
  >>> e.epoch, e.step
  (3, 17)
  """

  def __init__(self, epoch: int, step: int, message: str):
    super().__init__(message)
    self.epoch, self.step = epoch, step


class StopOnNaN(tf_keras.callbacks.Callback):
  """Raises `TrainingDiverged` at the end of an epoch whose loss went NaN/Inf.

  Batch losses are kept as tensors and looked at once per epoch: reading
  each one would stall every step on the host. Raising in `on_epoch_end`,
  placed before the logging and checkpoint callbacks, keeps the broken epoch
  out of history.csv and the backup: the last good checkpoint stays. The
  message names the first bad step; the noise callback, if given, records
  the state.
  """

  def __init__(self, noise_callback: Optional["NoiseAnalysisCallback"] = None):
    super().__init__()
    self._noise = noise_callback
    self._losses: List[tf.Tensor] = []
    self._supports_tf_logs = True  # tensors in, no per-batch conversion

  def on_epoch_begin(self, epoch, logs=None):
    self._losses = []

  def on_train_batch_end(self, batch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None:
      self._losses.append(loss)

  def on_epoch_end(self, epoch, logs=None):
    if not self._losses:
      return
    losses = np.asarray([float(l) for l in tf.stack(self._losses).numpy()])
    bad = np.flatnonzero(~np.isfinite(losses))
    if not bad.size:
      return
    step = int(bad[0])
    if self._noise is not None:
      self._noise._record(epoch, {"loss": float(losses[step]),  # pylint: disable=protected-access
                                  "nan_step": step})
    raise TrainingDiverged(
        epoch, step,
        f"loss became {losses[step]} at epoch {epoch + 1}, step {step + 1}; "
        "training stopped, the checkpoint of the last finished epoch is "
        "kept. Lower --learning_rate (or raise the bits) and rerun.")


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored (corrupt, or of another model).

  Trainers exit 2 on it with its one line (`kqreg.runs.BAD_INPUT_ERRORS`).

  Example:
  >>> issubclass(CheckpointError, ValueError)
  True
  """


class CheckedBackupAndRestore(tf_keras.callbacks.BackupAndRestore):
  """Keras' BackupAndRestore that refuses a broken backup in one sentence.

  Restoring happens in `on_train_begin`; a truncated file or a checkpoint of
  another architecture raises deep inside TensorFlow. Nothing is deleted:
  the message says which folder to remove to start over.
  """

  def on_train_begin(self, logs=None):
    try:
      super().on_train_begin(logs)
    except (tf.errors.OpError, ValueError, IndexError) as e:
      # Measured: a truncated .index raises OpError, a checkpoint of another
      # model ValueError, a truncated .data file IndexError("Read less bytes
      # than requested"). Any other IndexError is a bug, not bad input.
      if isinstance(e, IndexError) and "Read less bytes" not in str(e):
        raise
      raise CheckpointError(
          f"the checkpoint in {self.backup_dir} cannot be restored "
          f"({type(e).__name__}: {str(e).splitlines()[0][:160]}). It is "
          "corrupt or from other settings: delete that folder to train from "
          "scratch, or use a new --model_dir.") from e


class EpochCSVLogger(tf_keras.callbacks.Callback):
  """One CSV row per epoch (`epoch` then the logs), resume-safe.

  Unlike Keras' CSVLogger in append mode, a run resumed at epoch k first
  drops rows ≥ k that an interrupted run may have written, so every epoch
  appears exactly once.
  """

  def __init__(self, path: str):
    super().__init__()
    self.path = path
    self._started = False

  def on_train_begin(self, logs=None):
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._started = False

  def on_epoch_begin(self, epoch, logs=None):
    if not self._started:
      self._started = True
      truncate_csv_at_epoch(self.path, epoch)

  def on_epoch_end(self, epoch, logs=None):
    logs = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
    append_csv_rows(self.path, [{"epoch": epoch, **logs}], ["epoch", *sorted(logs)])


class StopIfLockLost(tf_keras.callbacks.Callback):
  """Stops a run whose lock another process took over (it may be writing
  the run now), before this epoch reaches history.csv or the backup.

  `lock`: a held `kqreg.runs.lock.RunLock`; its `check()` raises
  `RunLockLost` once another process owns the model dir.
  """

  def __init__(self, lock):
    super().__init__()
    self._lock = lock

  def on_epoch_end(self, epoch, logs=None):
    self._lock.check()


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

  Example:
  >>> import tempfile
  >>> folder = tempfile.mkdtemp()
  >>> [type(c).__name__ for c in callbacks_in_order(
  ...     out_dir=folder, backup_dir=folder, task_callbacks=[],
  ...     noise_callback=None)]
  ['StopOnNaN', 'EpochCSVLogger', 'CheckedBackupAndRestore', 'TensorBoard']
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
