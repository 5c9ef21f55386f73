"""`kqreg-benchmark`'s whole run: every measurement, in one JSON-ready dict.

The measurements live in `benchmark` (kqreg against float and stock tfmot,
the noise callback, export, memory, sweep throughput) and `peer_benchmark`
(the peers table); `benchmark_report` renders the dict.
"""

from __future__ import annotations

import sys
from typing import Dict

from kqreg.study import benchmark
from kqreg.study import peer_benchmark
from kqreg.study import step_timing

__all__ = ["run_benchmark"]


def run_benchmark(*, quick: bool = False, repeats: int = 5,
                  rounds: int = 20, processes: int = 5) -> Dict[str, object]:
  """Every measurement of the benchmark, as one JSON-ready dict.

  `quick` shrinks it to a smoke run (small CNN only, fewer repetitions,
  step times in this process). Otherwise each model's step times come from
  `processes` fresh processes, `rounds` rounds in all.
  Prints one line per figure as it is measured (a full run takes long).
  """
  repeats = 3 if quick else repeats
  results: Dict[str, object] = {
      "quick": quick,
      "machine": benchmark.machine(),
      "command": " ".join(["kqreg-benchmark"] + sys.argv[1:]),
  }
  results["step_time"] = step_timing.step_time_rows(
      benchmark._QUICK_MODELS if quick else benchmark._FULL_MODELS,
      3 if quick else rounds, 5 if quick else 10,
      (False,) if quick else (False, True), 1 if quick else processes)
  results["step_time_processes"] = 1 if quick else processes
  results["callback"] = benchmark.callback_overhead(
      epochs=3 if quick else 6, **({"widths": (16, 32, 64)} if quick else {}))
  print(f"noise callback: {results['callback']['ratio']:.3f}x epoch time",
        flush=True)
  results["noise_cost"] = benchmark._noise_costs(benchmark._NOISE_MODELS[:2] if quick else
                                       benchmark._NOISE_MODELS, repeats)
  results["tflite"] = benchmark._tflite(quick)
  results["peers"] = peer_benchmark.peers_section(quick)
  results["memory"] = benchmark._memory(quick)
  results["sweep"] = benchmark.sweep_throughput(quick=quick)
  return results
