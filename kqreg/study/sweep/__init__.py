"""A bit-width sweep: its arms, runs, statistics, report and figures.

  arms         policy strings as arms; noise twins and their pairs
  runner       runs a sweep's configs in worker processes
  statistics   Welch tests, confidence intervals, Holm, power (MDD)
  paired       paired tests by seed, equivalence (TOST), dose-response
  decision     each arm's reading from the paired tests, the trend, the control
  overfitting  the validation-loss rise against a simulated null
  report       run records -> CSVs and report.md with the verdict
  tables       the report's Markdown and CSV tables
  figures      validation curves, gap against std(δ), noise against bits
Import the module you need: this package imports nothing itself.
"""
