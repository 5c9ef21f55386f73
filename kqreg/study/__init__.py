"""Measurement tooling: a sweep's statistics, report and figures; the benchmark.

  statistics.py  Welch tests, confidence intervals, Holm, power (MDD)
  overfitting.py the validation-loss rise against a simulated null
  arms.py        policy strings as arms; noise twins and their pairs
  report.py      RunRecord -> CSVs and report.md with the verdict
  figures.py     validation curves, gap against std(δ), noise against bits
  sweep.py       runs a sweep's configs in worker processes
  tables.py      the report's Markdown and CSV tables
  mixed_precision.py  allocated vs uniform vs first/last-8 at equal size
  peers.py       tfmot n-bit, QKeras and Larq adapters (build, export)
  step_timing.py step time against float: paired rounds, fresh processes,
                 each ratio with its 95% interval
  benchmark.py, peer_benchmark.py, benchmark_suite.py, benchmark_report.py
                 kqreg-benchmark's other measurements, the peers table, the
                 whole run, and its page
Import the module you need, `from kqreg.study import report`: this package
imports nothing itself, so the benchmark does not pay for SciPy and the
report does not pay for TensorFlow beyond `kqreg`'s own import.
"""
