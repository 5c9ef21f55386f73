"""What every kqreg console script does around its own work.

  start        an entry point's `main`: quiet imports, its flag groups, absl
  train        the whole of kqreg-classify and kqreg-detect
  parser       flag errors in one line, exit 2
  run_main     stray arguments refused, then `run_guarded`
  run_guarded  kqreg's user-facing errors -> one line and an exit status;
               a folder the refused command created is removed
  run_config   the task's `RunConfig` from the parsed flags (`config_values`),
               `check_task_flags`, `given`

Exit statuses: 2 bad input, 3 training diverged, 130 interrupted (as shells
report SIGINT). The flags themselves are defined in `flags.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from absl import app as absl_app
from absl import flags as absl_flags
from absl import logging

from . import flags as kqreg_flags

FLAGS = absl_flags.FLAGS

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


def quiet_import() -> None:
  """Imports kqreg (so TensorFlow) with the C library's stderr muted.

  TensorFlow 2.21 prints INFO lines from C++ at import and at device setup
  that no environment variable silences; a trainer's stderr is for its own
  messages. Python errors still surface: they are raised after stderr is
  back. Called by each entry point's `main`, never at import.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import kqreg  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


# --- flags -> config ------------------------------------------------------


def given(name: str) -> bool:
  """True if flag `name` was set on the command line or in a flagfile."""
  return name in FLAGS and FLAGS[name].present


def check_task_flags(task: str) -> None:
  """Refuses a flag given that only the other task uses."""
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  for other in runs.TASKS:
    if other == task or other not in kqreg_flags.DEFINED:
      continue
    for name in kqreg_flags.DEFINED[other]:
      if given(name):
        raise runs.ConfigError(
            f"--{name} applies to --task={other} only; drop it or switch "
            "--task.")


def config_values(task: str, values: Dict[str, Any]) -> Dict[str, Any]:
  """Config fields of `task` from flag values (flag name -> value).

  None stands for the field's default (a flag whose default differs between
  the tasks defaults to None); flags of no field of `task` are dropped.
  """
  fields = {f.name for f in dataclasses.fields(kqreg_flags.config_class(task))}
  out = {}
  for name, value in values.items():
    if name == "per_channel" and isinstance(value, str):
      value = kqreg_flags.PER_CHANNEL[value]
    field = kqreg_flags.FIELD_OF.get(name, name)
    if value is not None and field in fields:
      out[field] = value
  return out


def run_config(task: str, model_dir: str, **overrides):
  """The task's `RunConfig` from the parsed flags, `overrides` on top."""
  groups = ("run", task)
  values = {name: holder.value for group in groups
            for name, holder in kqreg_flags.DEFINED.get(group, {}).items()}
  return kqreg_flags.config_class(task)(
      model_dir=model_dir, **{**config_values(task, values), **overrides})


# --- failures and exit statuses -------------------------------------------


def parser(prog: str):
  """An absl `flags_parser` that reports a bad flag in one line, exit 2."""

  def _parse(argv):
    try:
      return FLAGS(argv)
    except absl_flags.Error as e:
      fail(prog, e)

  return _parse


def fail(prog: str, error: BaseException, status: int = EXIT_BAD_INPUT):
  """Exits with `status` and one readable line (no traceback)."""
  message = str(error).strip().splitlines()
  sys.stderr.write(f"{prog}: error: {' '.join(message)}\n")
  sys.exit(status)


def bad_input_errors() -> tuple:
  """The errors a user fixes by changing a flag or a file.

  The run library's (`kqreg.runs.BAD_INPUT_ERRORS`) and those each task
  imported so far declares (`Task.bad_input_errors`).
  """
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  errors = tuple(runs.BAD_INPUT_ERRORS)
  for module in runs.TASKS.values():
    task = getattr(sys.modules.get(module), "TASK", None)
    errors += tuple(getattr(task, "bad_input_errors", ()))
  return errors


def _holds_no_file(path: str) -> bool:
  """True if `path` is a folder tree without files (a run lock aside)."""
  from kqreg.runs import lock  # pylint: disable=g-import-not-at-top
  return all(name == lock.LOCK_NAME for _, _, names in os.walk(path)
             for name in names)


def run_guarded(prog: str, fn: Callable[[], Any],
                new_dirs: Iterable[Optional[str]] = ()):
  """Calls `fn()`, turning kqreg's user-facing errors into one-line exits.

  Each of `new_dirs` that does not exist yet and that a refused `fn` leaves
  holding no file (only folders, created before the error was found) is
  removed, so a refused command leaves nothing behind.
  """
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  fresh = [d for d in new_dirs if d and not os.path.lexists(d)]
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, bad_input_errors()):
      status = EXIT_BAD_INPUT
    elif isinstance(e, runs.TrainingDiverged):
      status = EXIT_DIVERGED
    elif isinstance(e, runs.TrainingInterrupted):
      status = EXIT_INTERRUPTED
    else:
      raise
    # RunLocked (bad input, exit 2): the folder is another live process's,
    # created since this command started; it is left alone.
    if status == EXIT_BAD_INPUT and not isinstance(e, runs.RunLocked):
      for folder in fresh:
        if os.path.isdir(folder) and _holds_no_file(folder):
          shutil.rmtree(folder, ignore_errors=True)
    fail(prog, e, status)


def run_main(prog: str, argv: Sequence[str], fn: Callable[[], Any],
             new_dirs: Iterable[Optional[str]] = ()):
  """An entry point's body: quiet logs, no stray arguments, `run_guarded`."""
  logging.set_verbosity(logging.ERROR)  # TF/TFDS info; kqreg warns itself
  if len(argv) > 1:
    fail(prog, absl_app.UsageError(
        f"unexpected arguments: {' '.join(argv[1:])}"))
  return run_guarded(prog, fn, new_dirs)


def start(prog: str, groups: Sequence[str],
          body: Callable[[Sequence[str], Any], None], *,
          required: Sequence[str] = (), detection: bool = False,
          defaults: Optional[Dict[str, Any]] = None) -> None:
  """An entry point's `main`: imports, flags, then `body(argv, holders)`.

  Args:
    prog: the console script's name, prefixing its error lines.
    groups: flag groups (`flags.define_flags`).
    body: called with absl's remaining argv and the groups' FlagHolders.
    required: flags to mark required.
    detection: import kqreg.detection (keras-cv) up front.
    defaults: flag defaults this entry point changes.
  """
  quiet_import()
  if detection:
    kqreg_flags.import_detection()
  holders = kqreg_flags.define_flags(*groups)
  for name in vars(holders):  # --help lists the script's own flags
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
  for name in required:
    absl_flags.mark_flag_as_required(name)
  for name, value in (defaults or {}).items():
    FLAGS.set_default(name, value)
  absl_app.run(lambda argv: body(argv, holders), flags_parser=parser(prog))


# --- kqreg-classify and kqreg-detect --------------------------------------


def _train(argv, task_name: str, prog: str, holders) -> None:
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  model_dir = holders.model_dir.value
  result = run_main(prog, argv, lambda: runs.run(
      run_config(task_name, model_dir)), new_dirs=[model_dir])
  task = runs.task_named(task_name)
  state = "already finished" if result.get("skipped") else "finished"
  print(f"{holders.bits.value}: {state} in {result['wall_time_s']:.0f}s: "
        f"{task.summary(result)}; results in {model_dir}/result.json")
  if "tflite" in result:
    print(task.tflite_summary(result["tflite"]))
  print(json.dumps(result, indent=2, sort_keys=True))


def train(task_name: str, prog: str) -> None:
  """The `main` of the trainer of `task_name` (kqreg-classify, -detect)."""
  start(prog, ("model_dir", "run", task_name),
        lambda argv, holders: _train(argv, task_name, prog, holders),
        required=("model_dir",), detection=task_name == "detect")
