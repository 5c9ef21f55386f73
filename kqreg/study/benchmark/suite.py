"""`kqreg-benchmark`'s whole run: every measurement, in one JSON-ready dict.

The measurements live in `benchmark` (kqreg against float and stock tfmot,
the noise callback, export, memory, sweep throughput) and `peer_benchmark`
(the peers table); `benchmark_report` renders the dict.
"""

from __future__ import annotations

import sys
from typing import Dict, List

from kqreg.study.benchmark import measurements as benchmark
from kqreg.study.benchmark import peer_rows as peer_benchmark
from kqreg.study.benchmark import step_timing

__all__ = ["run_benchmark"]


def run_benchmark(*, quick: bool = False, repeats: int = 5,
                  rounds: int = 20, processes: int = 5) -> Dict[str, object]:
  """Every measurement of the benchmark, as one JSON-ready dict.

  `quick` shrinks it to a smoke run (small CNN only, two rounds of three
  steps, one timed callback epoch, step times in this process): its figures
  say the benchmark runs, not how fast anything is. Otherwise each model's step times come from
  `processes` fresh processes, `rounds` rounds in all.
  Prints one line per figure as it is measured (a full run takes long).
  """
  repeats = 3 if quick else repeats
  results: Dict[str, object] = {
      "quick": quick,
      "machine": benchmark.machine(),
      "command": " ".join(["kqreg-benchmark"] + sys.argv[1:]),
  }
  results["step_time"] = _own_rows_succeeded(step_timing.step_time_rows(
      benchmark._QUICK_MODELS if quick else benchmark._FULL_MODELS,
      2 if quick else rounds, 3 if quick else 10,
      (False,) if quick else (False, True), 1 if quick else processes))
  results["step_time_processes"] = 1 if quick else processes
  results["callback"] = benchmark.callback_overhead(
      epochs=2 if quick else 6, **({"widths": (16, 32, 64)} if quick else {}))
  print(f"noise callback: {results['callback']['ratio']:.3f}x epoch time",
        flush=True)
  results["noise_cost"] = benchmark._noise_costs(benchmark._NOISE_MODELS[:2] if quick else
                                       benchmark._NOISE_MODELS, repeats)
  results["tflite"] = benchmark._tflite(quick)
  results["peers"] = peer_benchmark.peers_section(quick)
  results["memory"] = benchmark._memory(quick)
  results["sweep"] = benchmark.sweep_throughput(quick=quick)
  return results


# Variants of the step-time table that only third-party code builds: the
# others (float, kqreg_*) are kqreg's own and must not fail softly.
_THIRD_PARTY_VARIANTS = ("tfmot_8bit",)


def _own_rows_succeeded(rows: List[Dict[str, object]]
                        ) -> List[Dict[str, object]]:
  """`rows`, or RuntimeError if one of kqreg's own rows failed.

  `step_timing.paired_step_times` turns every variant's failure into a note
  (it may run in a child process); only stock tfmot's row may keep one.
  """
  failed = [r for r in rows
            if r.get("note") and r["variant"] not in _THIRD_PARTY_VARIANTS]
  if failed:
    raise RuntimeError("kqreg's own step-time rows failed: " + "; ".join(
        f"{r['model']} {r['variant']} (jit={r['jit']}): {r['note']}"
        for r in failed))
  return rows
