"""The shipped arm-level overfitting test's false-positive rate, measured.

`overfitting.false_positive_rate` runs `overfitting_verdict` itself (ρ
estimated from the arm's curves, Stouffer over its seeds) on arms that do
not overfit, at true noise correlation ρ up to 0.8, on flat curves and on
the shape of a cosine learning-rate schedule. Where the rate exceeds α the
report prints it beside the arm (it is not hard-coded text).
"""

import math

import numpy as np
import pytest

from kqreg.study.sweep import overfitting as ov
from kqreg.study.sweep import report

ALPHA = 0.05
DRAWS = 150


def _tolerance(draws=DRAWS, rate=ALPHA):
  return 3 * math.sqrt(rate * (1 - rate) / draws)


def test_rate_is_the_shipped_verdict_on_null_arms(monkeypatch):
  calls = []
  shipped = ov.overfitting_verdict

  def spy(curves, alpha=ALPHA):
    calls.append(len(curves["null"]))
    return shipped(curves, alpha)

  monkeypatch.setattr(ov, "overfitting_verdict", spy)
  ov.false_positive_rate.cache_clear()
  rate = ov.false_positive_rate(30, 5, 0.4, "flat", ALPHA, 40)
  ov.false_positive_rate.cache_clear()
  assert calls == [5] * 40 and 0 <= rate <= 1


def test_calibrated_for_weakly_correlated_flat_noise():
  rate = ov.false_positive_rate(30, 5, 0.4, "flat", ALPHA, DRAWS)
  assert rate <= ALPHA + _tolerance()


def test_liberal_at_rho_08_and_the_report_says_so():
  # Measured (2026-12-06, 400 arms each): flat noise, 30 epochs, 5 seeds:
  # 0.013 at ρ 0, 0.043 at 0.4, 0.068 at 0.6, 0.12 at 0.8; 8 seeds and
  # 60 epochs alike (0.09–0.135 at 0.8). ρ̂ from a few short curves is too
  # uncertain at high ρ; the report measures the rate per arm instead.
  rate = ov.false_positive_rate(30, 5, 0.8, "flat", ALPHA, DRAWS)
  assert rate > ALPHA
  verdict = ov.ArmOverfitting("fp", 5, 1, 0.8, 0.2, 0.01, 0.1, 2.0, 0.02,
                              0.02, True, ALPHA)
  line = report._overfitting_line(verdict, rate, DRAWS)  # pylint: disable=protected-access
  assert f"measured false-positive rate at ρ̂ 0.80 is {rate:.3f}" in line


def test_conservative_under_a_cosine_schedule():
  rate = ov.false_positive_rate(30, 5, 0.8, "cosine", ALPHA, DRAWS)
  assert rate <= ALPHA + _tolerance()


def test_null_curves_shapes():
  rng = np.random.default_rng(0)
  flat = ov.null_curves(rng, 3, 30, 0.5, "flat")
  cosine = ov.null_curves(rng, 3, 30, 0.5, "cosine")
  assert flat.shape == cosine.shape == (3, 30)
  assert cosine[:, :5].mean() > cosine[:, -5:].mean()  # falls with the lr
  with pytest.raises(ValueError):
    ov.null_curves(rng, 3, 30, 0.5, "step")
