"""Measurement tooling: a sweep's statistics, report and figures; the benchmark.

  statistics.py  Welch tests, confidence intervals, Holm, power (MDD)
  overfitting.py the validation-loss rise against a simulated null
  arms.py        policy strings as arms; noise twins and their pairs
  report.py      RunRecord -> CSVs and report.md with the verdict
  figures.py     validation curves, gap against std(δ), noise against bits
  sweep.py       runs a sweep's configs in worker processes
  benchmark.py, benchmark_report.py   kqreg-benchmark's measurements and page
Import the module you need, `from kqreg.study import report`: this package
imports nothing itself, so the benchmark does not pay for SciPy and the
report does not pay for TensorFlow beyond `kqreg`'s own import.
"""
