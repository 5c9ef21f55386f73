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

import json
import os
from typing import Dict, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras

from kqreg.io_utils import (append_csv_rows, atomic_write_text, clean_value,
                            truncate_csv_at_epoch)
from kqreg.noise import propagation_probe as propagation_lib
from kqreg.noise import statistics as noise

__all__ = ["NOISE_CSV_COLUMNS", "NoiseAnalysisCallback"]


NOISE_CSV_COLUMNS = (("epoch",) + noise.WEIGHT_NOISE_KEYS +
                     ("prop_measured", "prop_measured_local", "prop_predicted"))


class NoiseAnalysisCallback(tf_keras.callbacks.Callback):
  """Records `noise.weight_noise` (and `propagation.propagation`) during training.

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

  Example:
  >>> import kqreg, tf_keras, numpy as np, os, tempfile
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> qat = kqreg.quantize(model, "w4")
  >>> qat.compile("sgd", "mse")
  >>> x, y = np.ones((8, 4), "float32"), np.zeros((8, 2), "float32")
  >>> log_dir = tempfile.mkdtemp()
  >>> _ = qat.fit(x, y, epochs=1, verbose=0,
  ...             callbacks=[kqreg.NoiseAnalysisCallback(log_dir)])
  >>> sorted(os.listdir(log_dir))  # doctest: +ELLIPSIS
  [...'noise.csv'...]
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
    truncate_csv_at_epoch(self.csv_path, epoch)
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
    prop = (propagation_lib.propagation(model, self.probe_data)
            if self.probe_data is not None and stats else [])
    prop_by_layer = {row["layer"]: row for row in prop}
    epoch_logs = {k: clean_value(float(v)) for k, v in logs.items()
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
      append_csv_rows(self.csv_path, rows,
                  list(NOISE_CSV_COLUMNS) + sorted(epoch_logs))
    record = {"epoch": epoch, "logs": epoch_logs,
              "weight_noise": [{k: clean_value(v) for k, v in s.items()} for s in stats],
              "propagation": [{k: clean_value(v) for k, v in p.items()} for p in prop]}
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
        summary.scalar(f"{tag}/{key}", clean_value(s[key]))
      if tag in deltas:
        summary.histogram(f"{tag}/delta", deltas[tag])
    for p in prop:
      summary.scalar(f"{p['layer']}/propagation", clean_value(p["measured"]))
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
