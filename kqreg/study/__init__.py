"""What a sweep shows: statistics, the sweep report and its figures.

  statistics.py  Welch tests, confidence intervals, Holm, power (MDD), the
                 overfitting test against a simulated null
  arms.py        policy strings as arms; noise twins and their pairs
  report.py      RunRecord -> CSVs and report.md with the verdict
  figures.py     validation curves, gap against std(δ), noise against bits

(The sweep runner and the benchmark live here too; see their docstrings.)
Import the module you need, `from kqreg.study import report`: this package
imports nothing itself, so the benchmark does not pay for SciPy and the
report does not pay for TensorFlow beyond `kqreg`'s own import.
"""
