"""Benchmarks kqreg against float, stock tfmot and the peers, in one run.

  kqreg-benchmark --output_dir=runs/benchmark          # full (~60 min)
  kqreg-benchmark --quick --output_dir=/tmp/bench      # smoke run, 2-3 min

Writes benchmark.json and benchmark.md (tables, machine, targets) to
--output_dir and prints them. Timings are medians after warm-up; ratios are
against the float model measured the same way in the same run (step times
in paired rounds, in --processes fresh processes per model).
"""

from __future__ import annotations

import os

from . import app

PROG = "kqreg-benchmark"


def _run(holders) -> str:
  from kqreg import runs
  from kqreg.io_utils import atomic_write_json, atomic_write_text  # pylint: disable=g-import-not-at-top
  from kqreg.study.benchmark import report as benchmark_report
  from kqreg.study.benchmark import suite as benchmark_suite
  output_dir = holders.output_dir.value
  runs.make_dir(output_dir, "output_dir")
  results = benchmark_suite.run_benchmark(quick=holders.quick.value,
                                    repeats=holders.repeats.value,
                                    rounds=holders.rounds.value,
                                    processes=holders.processes.value)
  atomic_write_json(os.path.join(output_dir, "benchmark.json"), results)
  text = benchmark_report.markdown(results)
  atomic_write_text(os.path.join(output_dir, "benchmark.md"), text)
  return text


def _main(argv, holders) -> None:
  text = app.run_main(PROG, argv, lambda: _run(holders),
                      new_dirs=[holders.output_dir.value])
  print()
  print(text)


def main() -> None:
  app.start(PROG, ("benchmark",), _main)


if __name__ == "__main__":
  main()
