"""A bit-width sweep: its arms, runs, statistics, report and figures.

  arms         policy strings as arms; noise twins and their pairs
  runner       runs a sweep's configs, deferring runs another process holds
  workers      this process or a pool of quiet worker processes
  ray_cluster  each run a Ray task on a cluster
  statistics   Welch tests, confidence intervals, Holm, power (MDD)
  paired_tests the tests of one pair of arms: paired t, sign flip, TOST
  paired       a family of paired comparisons: Holm intervals, readings
  dose_response  the paired effect against log std(δ): per-seed trend, WLS
  decision     each arm's reading from the paired tests, the trend, the control
  overfitting  the validation-loss rise against a simulated null
  records      a sweep's runs, and what each task reports of them
  analysis     runs aggregated and compared: the figures behind the report
  report       the verdict in words; CSVs, report.md and plots in one folder
  tables       the report's Markdown and CSV tables
  figures      validation curves, gap against std(δ), noise against bits
Import the module you need: this package imports nothing itself.
"""
