"""Trains one configuration over bit settings and seeds, then reports.

  kqreg-sweep --flagfile=configs/mnist_sweep.cfg
  kqreg-sweep --task=detect --flagfile=configs/shapes_yolov8.cfg \
      --sweep_bits=fp,w8,w4 --output_dir=runs/shapes_sweep

--task=classify trains classifiers (kqreg-classify's flags), --task=detect
YOLOv8 detectors (kqreg-detect's flags). --workers runs several at once;
--ray_address=auto|<host:port>|ray://<host:port> runs each as a task on a
Ray cluster instead (docs/cluster.md). One line per finished run, with the
runs left and an ETA.

Two sweeps into one --output_dir share the work: a run another process is
writing is put off and picked up (finished) later.

Each run goes to --output_dir/runs/<bits>_seed<seed> (finished runs are
skipped on rerun, interrupted ones resume). Writes report.md, results.csv,
runs.csv and plots to --output_dir and prints the table with its verdict.

--arms (or --sweep_bits) lists the arms: a bit policy, optionally with
other settings of the run, `<policy>[+key=value...]`, e.g.
--arms=fp,w4,n4,fp+weight_decay=0.5 (a positive control: an established
regularizer read with the same seeds and analysis).
--equivalence_margins=val_accuracy:0.02,val_loss:0.05 declares, before the
run, what difference counts as none (the report's TOST readings).

--combine=<dir>,<dir>[,...] trains nothing: it sets finished sweeps (one
setting each) side by side in --output_dir, each arm's paired effect per
setting and pooled over them (cross_setting.md, .csv, .png).
"""

from __future__ import annotations

import os
import re
import sys
import time

from . import app

PROG = "kqreg-sweep"


def parse_sweep_bits(text: str, flag: str = "sweep_bits"):
  """Splits --sweep_bits (or --arms) into arm strings, each validated.

  An arm is a bit policy with optional `+key=value` settings
  (`kqreg.study.sweep.arms.parse_arm`); the policy is validated here, the
  settings' keys against the task's config in `arm_settings`.
  """
  from kqreg import runs
  from kqreg.qat.policy import BitPolicy, PolicyError  # pylint: disable=g-import-not-at-top
  from kqreg.study.sweep import arms as arms_lib  # pylint: disable=g-import-not-at-top
  separator = ";" if ";" in text else ","
  policies = [p.strip() for p in text.split(separator) if p.strip()]
  if not policies:
    raise runs.ConfigError(f"--{flag}: give at least one bit policy.")
  for policy in policies:
    try:
      BitPolicy.parse(arms_lib.parse_arm(policy)[0])
    except (PolicyError, arms_lib.ArmError) as e:
      raise runs.ConfigError(f"--{flag}: {e}") from e
  if len(set(policies)) != len(policies):
    raise runs.ConfigError(f"--{flag}: {text!r} repeats a policy.")
  return policies


def arm_settings(task: str, arm: str, flag: str = "arms"):
  """(policy, config overrides) of an arm; keys checked against the task."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from kqreg import runs
  from kqreg.study.sweep import arms as arms_lib  # pylint: disable=g-import-not-at-top
  policy, overrides = arms_lib.parse_arm(arm)
  fields = {f.name for f in dataclasses.fields(app.kqreg_flags.config_class(
      task))}
  for key in overrides:
    name = app.kqreg_flags.FIELD_OF.get(key, key)
    if name not in fields:
      raise runs.ConfigError(
          f"--{flag}: arm {arm!r}: {key!r} is not a setting of --task={task} "
          f"(settings: {', '.join(sorted(fields - {'bits', 'seed', 'model_dir'}))}).")
  return policy, {app.kqreg_flags.FIELD_OF.get(k, k): v
                  for k, v in overrides.items()}


def parse_seeds(values):
  from kqreg import runs
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


def _duration(seconds: float) -> str:
  """12s, 3m05s, 1h02m."""
  seconds = int(round(max(0.0, seconds)))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _eta(elapsed: float, trained: int, left: int) -> str:
  """Time to the last run at the pace of the runs trained so far."""
  if not left:
    return "0s"
  if not trained:
    return "?"
  return _duration(elapsed / trained * left)


def _combine(holders) -> None:
  """--combine: the cross-setting table of finished sweeps, nothing trained."""
  from kqreg import runs
  from kqreg.study.sweep import cross_setting  # pylint: disable=g-import-not-at-top
  for name in ("arms", "sweep_bits", "seeds", "equivalence_margins"):
    if app.given(name):
      raise runs.ConfigError(f"--{name} trains a sweep; --combine only reads "
                             "finished ones: drop one of the two.")
  try:
    summary = cross_setting.write_cross_setting(
        holders.output_dir.value, holders.combine.value,
        names=holders.setting_names.value or None)
  except (ValueError, FileNotFoundError) as e:
    raise runs.ConfigError(f"--combine: {e}") from e
  print(summary["table"])
  print(f"\nReport: {summary['paths'][0]} (CSVs and figure beside it)")


def _sweep(holders) -> None:
  """Runs every (policy, seed), then writes and prints the report."""
  if holders.combine.value:
    _combine(holders)
    return
  from kqreg import runs
  from kqreg.study.sweep import report
  from kqreg.study.sweep.records import TASKS, RunRecord
  from kqreg.study.sweep import ray_cluster
  from kqreg.study.sweep import workers as workers_lib
  from kqreg.study.sweep import runner as sweep
  from kqreg.study.sweep import decision  # pylint: disable=g-import-not-at-top
  task = holders.task.value
  app.check_task_flags(task)
  if app.given("arms") and app.given("sweep_bits"):
    raise runs.ConfigError("--arms and --sweep_bits both list the arms: "
                           "give one.")
  flag = "arms" if app.given("arms") else "sweep_bits"
  policies = parse_sweep_bits(holders.arms.value if flag == "arms"
                              else holders.sweep_bits.value, flag)
  settings = {arm: arm_settings(task, arm, flag) for arm in policies}
  try:
    margins = decision.parse_margins(
        holders.equivalence_margins.value,
        [key for key, _ in TASKS[task].compared])
  except ValueError as e:
    raise runs.ConfigError(f"--equivalence_margins: {e}") from e
  seeds = parse_seeds(holders.seeds.value)
  output_dir = holders.output_dir.value
  grid = list(sweep.grid(policies, seeds))
  configs = [app.run_config(
      task, os.path.join(output_dir, "runs", run_dir_name(arm, seed)),
      **{**settings[arm][1], "bits": settings[arm][0], "seed": seed})
             for arm, seed in grid]
  for config in configs:
    config.validate()  # refused before anything is written
  ray = None
  if holders.ray_address.value:
    ray = ray_cluster.RayOptions(holders.ray_address.value,
                                 cpus_per_run=holders.ray_cpus_per_run.value,
                                 gpus_per_run=holders.ray_gpus_per_run.value,
                                 max_retries=holders.ray_max_retries.value)
    ray_cluster.connect_ray(ray)  # an unreachable cluster: one line, nothing run
  runs.make_dir(output_dir, "output_dir")
  workers = holders.workers.value or workers_lib.default_workers()
  start, done, trained = time.time(), [0], [0]

  def _line(index, result, node):
    done[0] += 1
    trained[0] += not result.get("skipped")
    policy, seed = grid[index]
    state = ("skipped (done)" if result.get("skipped") else
             f"{result['wall_time_s']:.0f}s")
    if ray is not None and not result.get("skipped"):
      state += f" on {node}"
    left = len(grid) - done[0]
    eta = _eta(time.time() - start, trained[0], left)
    print(f"[{done[0]}/{len(grid)}] bits={policy} seed={seed}: "
          f"{runs.task_named(task).summary(result)}  [{state}]  "
          f"{left} left, ETA {eta}", flush=True)

  def _waiting(indices):
    names = ", ".join(os.path.basename(configs[i].model_dir) for i in indices)
    print(f"waiting for {len(indices)} run(s) another process is writing: "
          f"{names}", flush=True)

  results = sweep.run_configs(configs, workers=workers, on_result=_line,
                              ray=ray, quiet=not holders.verbose.value,
                              on_wait=_waiting)
  records = [RunRecord(policy, seed, result, result.get("history", []))
             for (policy, seed), result in zip(grid, results)]
  command = " ".join(["kqreg-sweep"] + sys.argv[1:])
  with sweep.exclusive(output_dir):  # a second sweep writes it after
    summary = report.write_report(
        output_dir, records, policies, title=holders.title.value,
        command=command, wall_time_s=time.time() - start,
        task=TASKS[task], margins=margins)
  print()
  print(summary["table"])
  print()
  print("Verdict:")
  print("\n".join(summary["verdict"]))
  print(f"\nReport: {os.path.join(output_dir, 'report.md')} "
        f"(plots and CSVs beside it)")


def _main(argv, holders) -> None:
  app.run_main(PROG, argv, lambda: _sweep(holders),
               new_dirs=[holders.output_dir.value])


def main() -> None:
  # One line per finished run; --verbose=2 brings back a line per epoch.
  app.start(PROG, ("run", "classify", "detect", "sweep"), _main,
            defaults={"verbose": 0})


if __name__ == "__main__":
  main()
