"""Trains one configuration over bit settings and seeds, then reports.

  kqreg-sweep --flagfile=configs/mnist_sweep.cfg
  kqreg-sweep --task=detect --flagfile=configs/shapes_yolov8.cfg \
      --sweep_bits=fp,w8,w4 --output_dir=runs/shapes_sweep

--task=classify trains classifiers (kqreg-classify's flags), --task=detect
YOLOv8 detectors (kqreg-detect's flags). --workers runs several at once.

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
from absl import flags

from . import flags as kqreg_flags

PROG = "kqreg-sweep"


def parse_sweep_bits(text: str):
  """Splits --sweep_bits into policy strings, each validated."""
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  from kqreg.policy import BitPolicy, PolicyError  # pylint: disable=g-import-not-at-top
  separator = ";" if ";" in text else ","
  policies = [p.strip() for p in text.split(separator) if p.strip()]
  if not policies:
    raise runs.ConfigError("--sweep_bits: give at least one bit policy.")
  for policy in policies:
    try:
      BitPolicy.parse(policy)
    except PolicyError as e:
      raise runs.ConfigError(f"--sweep_bits: {e}") from e
  if len(set(policies)) != len(policies):
    raise runs.ConfigError(f"--sweep_bits: {text!r} repeats a policy.")
  return policies


def parse_seeds(values):
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  try:
    seeds = [int(v) for v in values]
  except ValueError as e:
    raise runs.ConfigError(
        f"--seeds: expected integers, got {','.join(values)!r}.") from e
  if not seeds or len(set(seeds)) != len(seeds):
    raise runs.ConfigError(
        f"--seeds: give distinct integers, got {','.join(values)!r}.")
  return seeds


def run_dir_name(bits: str, seed: int) -> str:
  return f"{re.sub(r'[^A-Za-z0-9]+', '_', bits).strip('_')}_seed{seed}"


def _sweep(holders) -> None:
  """Runs every (policy, seed), then writes and prints the report."""
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  from kqreg.study import report  # pylint: disable=g-import-not-at-top
  from kqreg.study import sweep  # pylint: disable=g-import-not-at-top
  task = holders.task.value
  kqreg_flags.check_task_flags(task)
  policies = parse_sweep_bits(holders.sweep_bits.value)
  seeds = parse_seeds(holders.seeds.value)
  output_dir = holders.output_dir.value
  runs.make_dir(output_dir, "output_dir")
  grid = list(sweep.grid(policies, seeds))
  configs = [kqreg_flags.run_config(
      task, os.path.join(output_dir, "runs", run_dir_name(policy, seed)),
      bits=policy, seed=seed) for policy, seed in grid]
  workers = holders.workers.value or sweep.default_workers()
  start, done = time.time(), [0]

  def _line(index, result):
    done[0] += 1
    policy, seed = grid[index]
    state = ("skipped (done)" if result.get("skipped") else
             f"{result['wall_time_s']:.0f}s")
    print(f"[{done[0]}/{len(grid)}] bits={policy} seed={seed}: "
          f"{runs.task_named(task).summary(result)}  [{state}]", flush=True)

  results = sweep.run_configs(configs, workers=workers, on_result=_line)
  records = [report.RunRecord(policy, seed, result, result.get("history", []))
             for (policy, seed), result in zip(grid, results)]
  command = " ".join(["kqreg-sweep"] + sys.argv[1:])
  summary = report.write_report(
      output_dir, records, policies, title=holders.title.value,
      command=command, wall_time_s=time.time() - start,
      task=report.TASKS[task])
  print()
  print(summary["table"])
  print()
  print("Verdict:")
  print("\n".join(summary["verdict"]))
  print(f"\nReport: {os.path.join(output_dir, 'report.md')} "
        f"(plots and CSVs beside it)")


def _main(argv, holders) -> None:
  kqreg_flags.run_main(PROG, argv, lambda: _sweep(holders))


def main() -> None:
  kqreg_flags.quiet_import()
  holders = kqreg_flags.define_flags("run", "classify", "detect", "sweep")
  # One line per finished run; --verbose=2 brings back a line per epoch.
  flags.FLAGS.set_default("verbose", 0)
  app.run(lambda argv: _main(argv, holders),
          flags_parser=kqreg_flags.parser(PROG))


if __name__ == "__main__":
  main()
