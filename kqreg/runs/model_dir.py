"""A run's folder: params.json, history.csv, result.json and model.keras.

Everything `kqreg.runs.run` reads from or writes to `model_dir`, and the
checks that keep a folder to one run: a rerun with other settings is refused,
a finished run is returned as it is.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Dict, List, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg.io_utils import atomic_write_json
from kqreg.qat.layers import quantize_scope
from kqreg.runs.config import ConfigError, RunConfig

__all__ = ["check_model_dir", "finished_result", "make_dir", "write_params",
           "read_params", "read_history", "val_loss_summary", "save_model"]


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


def finished_result(model_dir: str,
                    identity: Dict[str, Any]) -> Optional[Dict[str, Any]]:
  """A finished run's result.json with `skipped` set, or None to train."""
  if not check_model_dir(model_dir, identity):
    return None
  with open(os.path.join(model_dir, "result.json")) as f:
    result = json.load(f)
  result["skipped"] = True
  return result


def make_dir(path: str, flag: str) -> None:
  """Creates the folder `path`; `ConfigError` naming `--<flag>` if it cannot.

  Example:
  >>> import kqreg.runs, os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), "runs", "w4a8")
  >>> kqreg.runs.make_dir(path, "model_dir")
  >>> os.path.isdir(path)
  True
  """
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ConfigError(
        f"--{flag}={path!r} cannot be created ({e.strerror or e}); pass a "
        "writable folder.") from e


def write_params(config: RunConfig) -> None:
  atomic_write_json(os.path.join(config.model_dir, "params.json"),
                    {"task": config.TASK, "identity": config.identity(),
                     "config": config.to_json()})


def read_params(model_dir: str) -> Dict[str, Any]:
  """params.json of a run folder, with errors that say what to pass.

  Example:
  >>> import kqreg.runs, tempfile
  >>> try:
  ...   kqreg.runs.read_params(tempfile.mkdtemp())
  ... except kqreg.runs.ConfigError as e:
  ...   print("no params.json" in str(e))
  True
  """
  path = os.path.join(model_dir, "params.json")
  try:
    with open(path) as f:
      params = json.load(f)
  except FileNotFoundError as e:
    raise ConfigError(
        f"--model_dir={model_dir!r} has no params.json; pass a folder "
        "written by kqreg-classify or kqreg-detect.") from e
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path!r} is unreadable: {e}") from e
  if not isinstance(params, dict) or "task" not in params or (
      "config" not in params):
    raise ConfigError(
        f"{path!r} names no task or config (written by an older kqreg); "
        "train the run again with this version.")
  return params


def val_loss_summary(history: List[Dict[str, str]]) -> Dict[str, Any]:
  """`best_val_loss`, `best_epoch`, `last_epoch_val_loss` of history rows."""
  # An epoch whose validation loss overflowed is logged empty.
  finite = [row for row in history if row.get("val_loss") not in ("", None)]
  if not finite:
    return {}
  best = min(finite, key=lambda row: float(row["val_loss"]))
  return {"best_val_loss": float(best["val_loss"]),
          "best_epoch": int(float(best["epoch"])),
          "last_epoch_val_loss": float(finite[-1]["val_loss"])}


def read_history(path: str) -> List[Dict[str, str]]:
  """The rows of a run's history.csv ([] before the first epoch ends).

  Example:
  >>> import kqreg.runs, os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), "history.csv")
  >>> kqreg.runs.read_history(path)
  []
  >>> with open(path, "w") as f:
  ...   print("epoch,loss,val_loss", "0,0.5,0.6", sep="\\n", file=f)
  >>> kqreg.runs.read_history(path)
  [{'epoch': '0', 'loss': '0.5', 'val_loss': '0.6'}]
  """
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def save_model(model: tf_keras.Model, out_dir: str) -> None:
  # Keras writes in place: save beside, then rename, so a kill leaves no
  # truncated model.keras.
  partial = os.path.join(out_dir, ".partial-model.keras")
  with quantize_scope():
    model.save(partial)
  os.replace(partial, os.path.join(out_dir, "model.keras"))
