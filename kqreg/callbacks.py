"""`NoiseAnalysisCallback`: weight-noise statistics of every quantized layer, per epoch.

Writes to `log_dir`:
  - `noise.csv`: one row per quantized weight tensor per recorded epoch
    (columns `NOISE_CSV_COLUMNS`, then the epoch's `logs`), plus one row per
    epoch with `layer` = "output" when `probe_data` is given;
  - `noise.jsonl`: one JSON object per recorded epoch with the same figures;
  - TensorBoard summaries under `log_dir/noise`: scalars per layer and a
    histogram of δ per layer.

Figures also go into `logs` (`noise_std_ratio`, `noise_rel_norm`, and
`noise_output` with a probe), so CSVLogger and TensorBoard callbacks placed
after this one record them too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from typing import Dict, List, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg import noise
from kqreg.io_utils import atomic_write_text
from kqreg.quantize import freeze_activation_ranges, moving_average_quantizers

__all__ = ["NoiseAnalysisCallback", "FreezeActivationRanges",
           "EpochCSVLogger", "StopOnNaN",
           "TrainingDiverged", "CheckedBackupAndRestore", "CheckpointError",
           "NOISE_CSV_COLUMNS"]

NOISE_CSV_COLUMNS = (("epoch",) + noise.WEIGHT_NOISE_KEYS +
                     ("prop_measured", "prop_measured_local", "prop_predicted"))


def _clean(value):
  if isinstance(value, (np.floating, np.integer)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _truncate_csv(path: str, epoch: int) -> None:
  """Drops rows of `epoch` and later from the CSV at `path`, keeping the rest."""
  if not os.path.exists(path):
    return
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    fieldnames = reader.fieldnames
    rows = list(reader)
  kept = [r for r in rows if int(r["epoch"]) < epoch]
  if len(kept) == len(rows):
    return
  out = io.StringIO()
  if fieldnames:
    writer = csv.DictWriter(out, fieldnames=fieldnames, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(kept)
  atomic_write_text(path, out.getvalue())


def _append_csv(path: str, rows: List[Dict], fieldnames: List[str]) -> None:
  """Appends `rows`; the header of an existing file wins over `fieldnames`."""
  exists = os.path.exists(path) and os.path.getsize(path) > 0
  if exists:
    with open(path, newline="") as f:
      fieldnames = next(csv.reader(f))
  with open(path, "a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
    if not exists:
      writer.writeheader()
    writer.writerows({k: _clean(v) for k, v in row.items()} for row in rows)
    f.flush()
    os.fsync(f.fileno())


class TrainingDiverged(ArithmeticError):
  """The loss became NaN or Inf; `epoch` and `step` say where."""

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


class FreezeActivationRanges(tf_keras.callbacks.Callback):
  """Freezes the activation ranges once `after_epochs` epochs have trained.

  From epoch index `after_epochs` on, activation quantizers train on the
  ranges their moving averages reached and skip the per-step range update
  (`kqreg.freeze_activation_ranges`); the training step is retraced once, at
  the switch. A `fit` that starts (or resumes) at or past that epoch freezes
  before its first step, so a resumed run trains as an uninterrupted one. A
  `fit` that starts before it unfreezes first.

  Args:
    after_epochs: epochs of range updates before the freeze, >= 1.
  """

  def __init__(self, after_epochs: int):
    super().__init__()
    if (not isinstance(after_epochs, int) or isinstance(after_epochs, bool)
        or after_epochs < 1):
      raise ValueError("`after_epochs` must be a positive integer. "
                       f"Received: after_epochs={after_epochs!r}")
    self.after_epochs = after_epochs
    self._frozen: Optional[bool] = None  # unknown until the first epoch

  def on_train_begin(self, logs=None):
    self._frozen = None
    if not moving_average_quantizers(self.model):
      warnings.warn(
          f"FreezeActivationRanges: model {self.model.name!r} has no "
          "moving-average activation quantizer (a weight-only or float "
          "policy?); there is nothing to freeze.", stacklevel=2)

  def on_epoch_begin(self, epoch, logs=None):
    frozen = epoch >= self.after_epochs
    if frozen != self._frozen:
      if freeze_activation_ranges(self.model, frozen):
        self.model.make_train_function(force=True)
      self._frozen = frozen


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored (corrupt, or of another model)."""


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
      _truncate_csv(self.path, epoch)

  def on_epoch_end(self, epoch, logs=None):
    logs = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
    _append_csv(self.path, [{"epoch": epoch, **logs}], ["epoch", *sorted(logs)])


class NoiseAnalysisCallback(tf_keras.callbacks.Callback):
  """Records `noise.weight_noise` (and `noise.propagation`) during training.

  Args:
    log_dir: folder for `noise.csv`, `noise.jsonl` and TensorBoard events.
    every_n_epochs: record every n-th epoch (epochs are counted from 1); the
      last epoch is always recorded.
    probe_data: a batch of inputs (array or tuple (x, y)) for `propagation`;
      None skips propagation.
    histograms: write a TensorBoard histogram of δ per tensor.

  Resuming: on the first epoch of a `fit` that starts at epoch k, rows of
  epochs ≥ k left by an interrupted run are dropped and rows before k are
  kept as they were, so the files hold each epoch exactly once.
  """

  def __init__(self, log_dir: str, every_n_epochs: int = 1,
               probe_data=None, histograms: bool = True):
    super().__init__()
    if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
      raise ValueError("`every_n_epochs` must be a positive integer. "
                       f"Received: every_n_epochs={every_n_epochs!r}")
    self.log_dir = log_dir
    self.every_n_epochs = every_n_epochs
    if isinstance(probe_data, (tuple, list)) and len(probe_data) == 2:
      probe_data = probe_data[0]
    self.probe_data = probe_data
    self.histograms = histograms
    self._writer = None
    self._started = False
    self._last_recorded: Optional[int] = None
    self._last_epoch: Optional[int] = None
    self._last_logs: Dict = {}

  @property
  def csv_path(self) -> str:
    return os.path.join(self.log_dir, "noise.csv")

  @property
  def jsonl_path(self) -> str:
    return os.path.join(self.log_dir, "noise.jsonl")

  def on_train_begin(self, logs=None):
    os.makedirs(self.log_dir, exist_ok=True)
    self._started = False
    self._last_recorded = None

  def on_epoch_begin(self, epoch, logs=None):
    if not self._started:
      self._started = True
      self._truncate_from(epoch)

  def _truncate_from(self, epoch: int) -> None:
    """Drops rows of `epoch` and later (left by an interrupted run)."""
    _truncate_csv(self.csv_path, epoch)
    if os.path.exists(self.jsonl_path):
      with open(self.jsonl_path) as f:
        lines = [l for l in f if l.strip()]
      kept = [l for l in lines if json.loads(l)["epoch"] < epoch]
      if len(kept) != len(lines):
        atomic_write_text(self.jsonl_path, "".join(kept))

  def on_epoch_end(self, epoch, logs=None):
    self._last_epoch, self._last_logs = epoch, dict(logs or {})
    if (epoch + 1) % self.every_n_epochs == 0:
      self._record(epoch, logs if logs is not None else {})

  def on_train_end(self, logs=None):
    if self._last_epoch is not None and self._last_recorded != self._last_epoch:
      self._record(self._last_epoch, dict(self._last_logs))
    if self._writer is not None:
      self._writer.flush()

  def _record(self, epoch: int, logs: Dict) -> None:
    model = self.model
    stats = noise.weight_noise(model)
    prop = (noise.propagation(model, self.probe_data)
            if self.probe_data is not None and stats else [])
    prop_by_layer = {row["layer"]: row for row in prop}
    epoch_logs = {k: _clean(float(v)) for k, v in logs.items()
                  if np.ndim(v) == 0}
    rows = []
    for stat in stats:
      p = prop_by_layer.get(stat["layer"], {})
      rows.append({"epoch": epoch, **stat,
                   "prop_measured": p.get("measured"),
                   "prop_measured_local": p.get("measured_local"),
                   "prop_predicted": p.get("predicted"), **epoch_logs})
    if "output" in prop_by_layer:
      rows.append({"epoch": epoch, "layer": "output",
                   "prop_measured": prop_by_layer["output"]["measured"],
                   **epoch_logs})
    if stats:
      logs["noise_std_ratio"] = float(np.mean([s["std_ratio"] for s in stats]))
      logs["noise_rel_norm"] = float(np.mean([s["rel_norm"] for s in stats]))
    if "output" in prop_by_layer:
      logs["noise_output"] = prop_by_layer["output"]["measured"]
    self._append(epoch, rows, stats, prop, epoch_logs)
    self._last_recorded = epoch

  def _append(self, epoch, rows, stats, prop, epoch_logs) -> None:
    if rows:
      _append_csv(self.csv_path, rows,
                  list(NOISE_CSV_COLUMNS) + sorted(epoch_logs))
    record = {"epoch": epoch, "logs": epoch_logs,
              "weight_noise": [{k: _clean(v) for k, v in s.items()} for s in stats],
              "propagation": [{k: _clean(v) for k, v in p.items()} for p in prop]}
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    self._write_tensorboard(epoch, stats, prop)

  def _write_tensorboard(self, epoch, stats, prop) -> None:
    if not stats:
      return
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(
          os.path.join(self.log_dir, "noise"))
    deltas = noise.delta_values(self.model) if self.histograms else {}
    summary = _Summary()
    for s in stats:
      tag = f"{s['layer']}/{s['weight']}"
      for key in _TB_SCALARS:
        summary.scalar(f"{tag}/{key}", _clean(s[key]))
      if tag in deltas:
        summary.histogram(f"{tag}/delta", deltas[tag])
    for p in prop:
      summary.scalar(f"{p['layer']}/propagation", _clean(p["measured"]))
    with self._writer.as_default(step=epoch):
      tf.summary.experimental.write_raw_pb(summary.serialize(), step=epoch)


_TB_SCALARS = ("delta_std", "std_ratio", "sqnr_db", "clip_fraction")


class _Summary:
  """One TensorBoard `Summary` of scalars and histograms, written in one op.

  `tf.summary.scalar`/`histogram` cost about a millisecond each in eager
  mode, and the callback writes dozens every epoch; a summary proto built in
  Python costs microseconds per value.
  """

  def __init__(self):
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.plugins.histogram import metadata as histogram_metadata  # pylint: disable=g-import-not-at-top
    from tensorboard.plugins.scalar import metadata as scalar_metadata  # pylint: disable=g-import-not-at-top
    self._proto = summary_pb2.Summary()
    self._metadata = {
        plugin: summary_pb2.SummaryMetadata.FromString(
            module.create_summary_metadata(
                display_name=None, description=None).SerializeToString())
        for plugin, module in (("scalars", scalar_metadata),
                               ("histograms", histogram_metadata))}

  def _add(self, tag: str, plugin: str, value: np.ndarray) -> None:
    entry = self._proto.value.add(tag=tag)
    entry.metadata.CopyFrom(self._metadata[plugin])
    entry.tensor.CopyFrom(tf.make_tensor_proto(value))

  def scalar(self, tag: str, value: Optional[float]) -> None:
    if value is not None:
      self._add(tag, "scalars", np.float32(value))

  def histogram(self, tag: str, values: np.ndarray, bins: int = 30) -> None:
    """Buckets `values` with NumPy, as TensorBoard's (left, right, count)."""
    values = values.ravel()
    values = values[np.isfinite(values)]  # a diverged run has NaN weights
    if values.size:
      counts, edges = np.histogram(values, bins=bins)
      self._add(tag, "histograms", np.stack(
          [edges[:-1], edges[1:], counts], axis=1).astype(np.float64))

  def serialize(self) -> bytes:
    return self._proto.SerializeToString()
