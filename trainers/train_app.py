"""What `kqreg-classify` and `kqreg-detect` share: parse, run, print."""

from __future__ import annotations

import json

from absl import app
from absl import flags
from absl import logging

from . import flags as kqreg_flags


def _train(argv, task_name: str, prog: str, holders) -> None:
  # TF and TFDS log info lines and every file read; kqreg warns itself.
  logging.set_verbosity(logging.ERROR)
  if len(argv) > 1:
    kqreg_flags.fail(prog, app.UsageError(
        f"unexpected arguments: {' '.join(argv[1:])}"))
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  model_dir = holders.model_dir.value
  task = runs.task_named(task_name)
  result = kqreg_flags.run_guarded(prog, lambda: runs.run(
      kqreg_flags.run_config(task_name, model_dir)))
  state = "already finished" if result.get("skipped") else "finished"
  print(f"{holders.bits.value}: {state} in {result['wall_time_s']:.0f}s: "
        f"{task.summary(result)}; results in {model_dir}/result.json")
  if "tflite" in result:
    print(task.tflite_summary(result["tflite"]))
  print(json.dumps(result, indent=2, sort_keys=True))


def main(task_name: str, prog: str) -> None:
  """The entry point of the training trainer of `task_name`."""
  kqreg_flags.quiet_import()
  holders = kqreg_flags.define_flags("model_dir", "run", task_name)
  flags.mark_flag_as_required("model_dir")
  app.run(lambda argv: _train(argv, task_name, prog, holders),
          flags_parser=kqreg_flags.parser(prog))
