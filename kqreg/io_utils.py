"""Files a killed run cannot corrupt: atomic writes and per-epoch CSV logs.

An atomic write goes to a temporary file beside the target, then a rename: a
process killed mid-write leaves the old file or the new one, never a truncated
one. Epoch CSVs are appended and fsynced row by row, and cut back to an epoch
when a run resumes from its backup, so each epoch appears once.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Dict, List

import numpy as np


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically (same-folder temp file + rename)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def clean_value(value):
  if isinstance(value, (np.floating, np.integer)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def truncate_csv_at_epoch(path: str, epoch: int) -> None:
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


def append_csv_rows(path: str, rows: List[Dict], fieldnames: List[str]) -> None:
  """Appends `rows`; the header of an existing file wins over `fieldnames`."""
  exists = os.path.exists(path) and os.path.getsize(path) > 0
  if exists:
    with open(path, newline="") as f:
      fieldnames = next(csv.reader(f))
  with open(path, "a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
    if not exists:
      writer.writeheader()
    writer.writerows({k: clean_value(v) for k, v in row.items()} for row in rows)
    f.flush()
    os.fsync(f.fileno())
