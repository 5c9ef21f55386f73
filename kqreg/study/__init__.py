"""Measurement tooling: sweeps and their verdicts, mixed-precision studies, the benchmark.

  sweep/            a bit-width sweep: arms, runs, statistics, report
  mixed_precision   allocated vs uniform vs first/last-8 at equal size
  benchmark/        kqreg-benchmark's measurements and page
Import the module you need, `from kqreg.study.sweep import report`: this
package imports nothing itself, so the benchmark does not pay for SciPy and
the report does not pay for TensorFlow beyond `kqreg`'s own import.
"""
