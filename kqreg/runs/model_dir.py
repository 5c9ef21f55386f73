"""A run's folder: params.json, history.csv, result.json and model.keras.

Everything `kqreg.runs.run` reads from or writes to `model_dir`, and the
checks that keep a folder to one run: a rerun with other settings is refused,
a finished run is returned as it is, and `claim` creates and locks the
folder for one writer (`kqreg.runs.lock`). A finished run is read back with
`load_run`, and a float run's weights with `initial_weights`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg.io_utils import atomic_write_json
from kqreg.qat.layers import quantize_scope
from kqreg.runs.config import ConfigError, RunConfig
from kqreg.runs.lock import RunLock
from kqreg.runs.task import InitialWeights, Task, task_named

__all__ = ["check_model_dir", "finished_result", "make_dir", "claim",
           "write_params", "read_params", "read_history", "val_loss_summary",
           "save_model", "load_run", "initial_weights"]


def check_model_dir(model_dir: str, identity: Dict[str, Any],
                    if_missing: Optional[Dict[str, Any]] = None) -> bool:
  """Checks model_dir/params.json against `identity`; True if finished.

  A key the saved identity lacks (a field added since the run was written)
  reads as its `if_missing` value (a config's `identity_if_missing()`).

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
    saved = {**(if_missing or {}), **saved}
    differ = [k for k in identity if saved.get(k) != identity[k]]
    if differ:
      details = ", ".join(f"--{k}={saved.get(k)!r} there, {identity[k]!r} now"
                          for k in differ)
      raise ConfigError(
          f"--model_dir {model_dir} holds a run with other settings "
          f"({details}); use a new --model_dir or the same flags.")
  return os.path.exists(os.path.join(model_dir, "result.json"))


def finished_result(config: RunConfig) -> Optional[Dict[str, Any]]:
  """`config`'s finished run: its result.json with `skipped` set, or None
  to train (`check_model_dir` with the config's identity)."""
  if not check_model_dir(config.model_dir, config.identity(),
                         config.identity_if_missing()):
    return None
  with open(os.path.join(config.model_dir, "result.json")) as f:
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
def claim(model_dir: str) -> Iterator[RunLock]:
  """Creates and locks `model_dir`; yields the held lock.

  The lock is taken before the data is read and the model built, so a
  second writer is refused at once (`RunLocked`, naming the owner) and two
  sweeps never both build the same run. A run refused before params.json
  is written removes the folders it created (a refused run leaves no
  folder behind); a lock of a dead process is taken over and the run
  resumes from its backup.
  """
  created = _missing_folders(model_dir)
  make_dir(model_dir, "model_dir")
  lock = RunLock(model_dir)
  try:
    lock.acquire()
  except FileNotFoundError:  # removed by a refused run between the two
    make_dir(model_dir, "model_dir")
    lock.acquire()
  try:
    if lock.took_over:
      backup = os.path.join(model_dir, "backup")
      # A progress note, not an error: stdout, so that a refusal that
      # follows (say, a corrupt backup) is still one line on stderr.
      sys.stdout.write(
          f"kqreg: run dir {model_dir}: took over the lock left by a dead "
          f"writer ({lock.takeover_reason}); "
          + ("resuming from its backup" if os.path.isdir(backup) else
             "no backup: training from the start") + "\n")
      sys.stdout.flush()
    yield lock
  finally:
    lock.release()
    if not os.path.exists(os.path.join(model_dir, "params.json")):
      for folder in created:
        try:
          os.rmdir(folder)  # only while empty: never another run's files
        except OSError:
          break


def _config_of(params: Dict[str, Any]) -> Tuple[Task, RunConfig]:
  task = task_named(params["task"])
  return task, task.config_class(**params["config"])


def _load_model(model_dir: str) -> tf_keras.Model:
  path = os.path.join(model_dir, "model.keras")
  if not os.path.isfile(path):
    raise ConfigError(
        f"--model_dir={model_dir!r} has no model.keras; train the run to the "
        "end first (kqreg-classify and kqreg-detect write it when they "
        "finish).")
  try:
    with quantize_scope():
      return tf_keras.models.load_model(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path!r} cannot be loaded: {e}") from e


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
  task, config = _config_of(read_params(model_dir))
  return task, config, _load_model(model_dir)


def initial_weights(config: RunConfig) -> Optional[InitialWeights]:
  """`config.init_from`'s trained float weights, or None without `init_from`.

  Read once per run, before the task builds its model: the task gets them
  passed in (`Task.build(..., initial=...)`). The source's params.json is
  read once, and its policy was parsed with its config.

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
  # Same task, so the source's config is of this config's class.
  source_config = type(config)(**params["config"])
  if not getattr(source_config.bits, "is_float", False):
    raise ConfigError(
        f"{flag} was trained at --bits={source_config.bits}; initialize from "
        "a float (--bits=fp) run.")
  return InitialWeights(flag, _load_model(config.init_from).get_weights())
