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

from absl import app

from . import flags as kqreg_flags

PROG = "kqreg-benchmark"


def _run(holders) -> str:
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  from kqreg.io_utils import atomic_write_json, atomic_write_text  # pylint: disable=g-import-not-at-top
  from kqreg.study import benchmark_report, benchmark_suite  # pylint: disable=g-import-not-at-top
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
  text = kqreg_flags.run_main(PROG, argv, lambda: _run(holders))
  print()
  print(text)


def main() -> None:
  kqreg_flags.quiet_import()
  holders = kqreg_flags.define_flags("benchmark")
  app.run(lambda argv: _main(argv, holders),
          flags_parser=kqreg_flags.parser(PROG))


if __name__ == "__main__":
  main()
