"""Trains one configuration over bit settings and seeds, then reports.

  kqreg-sweep --flagfile=configs/digits_sweep.cfg
  kqreg-sweep --task=detect --flagfile=configs/shapes_yolov8.cfg \
      --sweep_bits=fp,w8,w4 --output_dir=runs/shapes_sweep

--task=classify trains classifiers (kqreg-classify's flags), --task=detect
YOLOv8 detectors (kqreg-detect's flags).

Each run goes to --output_dir/runs/<bits>_seed<seed> (finished runs are
skipped on rerun, interrupted ones resume). Writes report.md, results.csv,
runs.csv and plots to --output_dir and prints the table with its verdict.
"""

from __future__ import annotations

import os
import re
import sys
import time

from absl import app
from absl import logging
from absl import flags

from trainers import flags as kqreg_flags

import tf_keras  # noqa: E402

from kqreg import report, training  # noqa: E402
from kqreg.policy import BitPolicy, PolicyError  # noqa: E402

FLAGS = flags.FLAGS


def _define_sweep_flags() -> None:
  flags.DEFINE_enum("task", "classify", list(report.TASKS),
                    "What to train: classifiers or detectors.")
  flags.DEFINE_string(
      "sweep_bits", "fp,w8,w6,w4,w3,w2",
      "Bit policies to sweep, comma separated; use ';' to separate policies "
      "that contain commas themselves ('fp;w4,first=w8;w2,first=w8').")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to run each policy with.")
  flags.DEFINE_string("output_dir", "runs/sweep",
                      "Folder for the runs and the report.")
  flags.DEFINE_string("title", "Bit-width sweep", "Title of report.md.")


def parse_sweep_bits(text: str):
  """Splits --sweep_bits and validates each policy."""
  separator = ";" if ";" in text else ","
  policies = [p.strip() for p in text.split(separator) if p.strip()]
  if not policies:
    raise training.ConfigError("--sweep_bits: give at least one bit policy.")
  for policy in policies:
    try:
      BitPolicy.parse(policy)
    except PolicyError as e:
      raise training.ConfigError(f"--sweep_bits: {e}") from e
  if len(set(policies)) != len(policies):
    raise training.ConfigError(f"--sweep_bits: {text!r} repeats a policy.")
  return policies


def parse_seeds(values):
  try:
    seeds = [int(v) for v in values]
  except ValueError as e:
    raise training.ConfigError(
        f"--seeds: expected integers, got {','.join(values)!r}.") from e
  if not seeds or len(set(seeds)) != len(seeds):
    raise training.ConfigError(
        f"--seeds: give distinct integers, got {','.join(values)!r}.")
  return seeds


def run_dir_name(bits: str, seed: int) -> str:
  return f"{re.sub(r'[^A-Za-z0-9]+', '_', bits).strip('_')}_seed{seed}"


def _read_history(path):
  return [{k: float(v) for k, v in row.items() if v not in ("", None)}
          for row in training.read_history(path)]


def _main(argv) -> None:
  logging.set_verbosity(logging.ERROR)  # TF/TFDS info and timing notes; kqreg warns via `warnings`
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  kqreg_flags.run_guarded("kqreg-sweep", _sweep)


def _sweep() -> None:
  """Runs every (policy, seed), then writes and prints the report."""
  task = report.TASKS[FLAGS.task]
  kqreg_flags.check_task_flags(task.name)
  kqreg_flags.use_task_defaults(task.name)
  policies = parse_sweep_bits(FLAGS.sweep_bits)
  seeds = parse_seeds(FLAGS.seeds)
  run_fn = _classify_run if task is report.CLASSIFICATION else _detect_run
  start = time.time()
  records = []
  total = len(policies) * len(seeds)
  for policy in policies:
    for seed in seeds:
      model_dir = os.path.join(FLAGS.output_dir, "runs",
                               run_dir_name(policy, seed))
      result, figures = run_fn(model_dir, policy, seed)
      tf_keras.backend.clear_session()
      state = "skipped (done)" if result.get("skipped") else (
          f"{result['wall_time_s']:.0f}s")
      print(f"[{len(records) + 1}/{total}] bits={policy} seed={seed}: "
            f"{figures}  [{state}]", flush=True)
      records.append(report.RunRecord(
          policy, seed, result,
          _read_history(os.path.join(model_dir, "history.csv"))))
  command = " ".join(["kqreg-sweep"] + sys.argv[1:])
  summary = report.write_report(FLAGS.output_dir, records, policies,
                                title=FLAGS.title, command=command,
                                wall_time_s=time.time() - start, task=task)
  print()
  print(summary["table"])
  print()
  print("Verdict:")
  print("\n".join(summary["verdict"]))
  print(f"\nReport: {os.path.join(FLAGS.output_dir, 'report.md')} "
        f"(plots and CSVs beside it)")


def _classify_run(model_dir: str, policy: str, seed: int):
  result = training.run(kqreg_flags.train_config(model_dir, bits=policy,
                                                 seed=seed))
  return result, (f"train acc {result['train_accuracy']:.3f}  val acc "
                  f"{result['val_accuracy']:.3f}  val loss "
                  f"{result['val_loss']:.3f}  gap "
                  f"{result['gap_accuracy']:+.3f}")


def _detect_run(model_dir: str, policy: str, seed: int):
  from kqreg.detection import training as detect_training  # pylint: disable=g-import-not-at-top
  result = detect_training.run(kqreg_flags.detect_config(
      model_dir, bits=policy, seed=seed))
  return result, (f"train loss {result['train_loss']:.3f}  val loss "
                  f"{result['val_loss']:.3f}  mAP@0.5 "
                  f"{result['val_map50']:.3f}  mAP@[.5:.95] "
                  f"{result['val_map']:.3f}")


def main() -> None:
  kqreg_flags.define_flags("classify", "detect")
  _define_sweep_flags()
  # One line per finished run; --verbose=2 brings back a line per epoch.
  FLAGS.set_default("verbose", 0)
  app.run(_main, flags_parser=kqreg_flags.parser("kqreg-sweep"))


if __name__ == "__main__":
  main()
