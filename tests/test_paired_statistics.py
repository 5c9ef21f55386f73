"""kqreg.study.sweep.paired_tests, paired and dose_response on synthetic data: fixed seeds, vectorized draws.

A rate over N simulated studies is checked against what the math
guarantees, within 3 binomial standard errors: α ± 3·√(α(1 − α)/N)
(N = 4000 at α = 0.05: ± 0.0103). A test that is exact (paired t on
normal differences, WLS t, sign flips) is checked on both sides of α, so
that an over-conservative implementation fails too.
"""

import doctest
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from kqreg.study.sweep import dose_response
from kqreg.study.sweep import paired
from kqreg.study.sweep import paired_tests

ALPHA = 0.05
N = 4000


def tolerance(rate: float, draws: int) -> float:
  """3 binomial standard errors of a rate estimated from `draws` studies."""
  return 3 * math.sqrt(rate * (1 - rate) / draws)


def correlated_pairs(rng, shape, rho, shift=0.0, sd=1.0):
  """x, y with corr(x_s, y_s) = rho, sd `sd`, mean(x) − mean(y) = shift."""
  shared = rng.normal(0.0, 1.0, shape)
  own_x, own_y = rng.normal(0.0, 1.0, shape), rng.normal(0.0, 1.0, shape)
  a, b = math.sqrt(rho), math.sqrt(1 - rho)
  return sd * (a * shared + b * own_x) + shift, sd * (a * shared + b * own_y)


def test_module_doctests_run_and_pass():
  result = doctest.testmod(paired)
  assert result.attempted >= 10
  assert result.failed == 0
  result = doctest.testmod(paired_tests)
  assert result.attempted >= 5
  assert result.failed == 0
  result = doctest.testmod(dose_response)
  assert result.attempted >= 3
  assert result.failed == 0


# --------------------------------------------------------------------------
# Paired t-test
# --------------------------------------------------------------------------


def test_paired_t_test_matches_scipy_and_drops_incomplete_pairs():
  rng = np.random.default_rng(0)
  x, y = correlated_pairs(rng, 7, 0.6, shift=0.4)
  ref = stats.ttest_rel(x, y)
  # A None and a NaN in extra seeds: those two pairs are dropped.
  test = paired_tests.paired_t_test(list(x) + [None, 1.0], list(y) + [2.0, np.nan])
  assert test.n == 7 and test.df == 6
  assert test.t == pytest.approx(ref.statistic)
  assert test.p == pytest.approx(ref.pvalue)
  ci = ref.confidence_interval(0.95)
  assert (test.ci_low, test.ci_high) == pytest.approx((ci.low, ci.high))
  assert test.correlation == pytest.approx(stats.pearsonr(x, y)[0])
  assert test.sd == pytest.approx(np.std(x - y, ddof=1))


def test_paired_t_test_degenerate_cases():
  constant = paired_tests.paired_t_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
  assert math.isnan(constant.p) and constant.diff == pytest.approx(0.5)
  assert constant.ci_low == constant.ci_high == constant.diff
  one = paired_tests.paired_t_test([1.0, None], [0.0, 1.0])
  assert one.n == 1 and math.isnan(one.p)
  flat = paired_tests.paired_t_test([1.0, 1.0, 1.0], [0.2, 0.5, 0.1])
  assert math.isnan(flat.correlation) and not math.isnan(flat.p)


def test_paired_t_size_on_correlated_null():
  rng = np.random.default_rng(1)
  x, y = correlated_pairs(rng, (N, 8), rho=0.8)
  rate = np.mean(paired_tests.paired_t_test(x, y).p <= ALPHA)
  # Exact on normal differences: size α, both ways.
  assert abs(rate - ALPHA) <= tolerance(ALPHA, N)


def test_paired_t_more_powerful_than_welch_on_correlated_pairs():
  draws, n, rho, shift = 2000, 8, 0.8, 0.6
  rng = np.random.default_rng(2)
  x, y = correlated_pairs(rng, (draws, n), rho, shift=shift)
  rate_paired = np.mean(paired_tests.paired_t_test(x, y).p <= ALPHA)
  rate_welch = np.mean(
      stats.ttest_ind(x, y, axis=-1, equal_var=False).pvalue <= ALPHA)
  # The paired test's power is exact: noncentral t with ncp = shift / se,
  # se = √(2(1 − ρ)/n) (0.80 here); Welch's sees √(2/n) (power ≈ 0.2).
  ncp = shift / math.sqrt(2 * (1 - rho) / n)
  crit = stats.t.ppf(1 - ALPHA / 2, n - 1)
  power = stats.nct.sf(crit, n - 1, ncp) + stats.nct.cdf(-crit, n - 1, ncp)
  assert abs(rate_paired - power) <= tolerance(power, draws)
  # Each rate has a binomial se ≤ 0.011, their difference ≤ 0.016; the
  # expected gap is ~0.6, so 0.3 is > 15 standard errors inside it.
  assert rate_paired >= rate_welch + 0.3


# --------------------------------------------------------------------------
# TOST
# --------------------------------------------------------------------------


def test_tost_is_the_two_one_sided_t_tests():
  rng = np.random.default_rng(3)
  x, y = correlated_pairs(rng, 12, 0.7, shift=0.1, sd=0.5)
  result = paired_tests.tost(x, y, margin=0.5)
  d = x - y
  lower = stats.ttest_1samp(d, -0.5, alternative="greater").pvalue
  upper = stats.ttest_1samp(d, 0.5, alternative="less").pvalue
  assert (result.p_lower, result.p_upper) == pytest.approx((lower, upper))
  assert result.p == pytest.approx(max(lower, upper))
  ci = stats.ttest_1samp(d, 0.0).confidence_interval(1 - 2 * ALPHA)
  assert (result.ci_low, result.ci_high) == pytest.approx((ci.low, ci.high))
  assert result.equivalent == (-0.5 < ci.low and ci.high < 0.5)
  with pytest.raises(ValueError):
    paired_tests.tost(x, y, margin=0.0)


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_tost_size_at_the_margin(side):
  margin, n = 1.0, 10
  rng = np.random.default_rng(4 if side > 0 else 5)
  x, y = correlated_pairs(rng, (N, n), 0.8, shift=side * margin)
  rate = np.mean(paired_tests.tost(x, y, margin).equivalent)
  # True Δ = ±margin: size ≤ α. With sd(d) = 0.63, se ≈ 0.2, the far
  # one-sided test rejects in all but ~1e-8 of studies, so the size is α
  # itself, and a rate well below α would mean a wrong test.
  assert abs(rate - ALPHA) <= tolerance(ALPHA, N)


def test_tost_finds_equivalence_with_enough_seeds():
  draws, n, margin = 1000, 40, 0.6
  rng = np.random.default_rng(6)
  x, y = correlated_pairs(rng, (draws, n), 0.5, sd=1.0)  # sd(d) = 1
  rate = np.mean(paired_tests.tost(x, y, margin).equivalent)
  # True Δ = 0, se = 1/√40 = 0.158: each one-sided test fails with
  # probability ≈ P(Z > 0.6/0.158 − t_{0.95,39}) = P(Z > 2.11) ≈ 0.018, so
  # the power is ≈ 0.96 (binomial se 0.006 at 1000 studies): 0.9 is ~10
  # standard errors below it.
  assert rate >= 0.9


# --------------------------------------------------------------------------
# Sign-flip permutation test
# --------------------------------------------------------------------------


def test_sign_flip_exact_extreme_cases():
  zeros = paired_tests.sign_flip_test(np.zeros(6), np.zeros(6))
  assert zeros.p == 1.0 and zeros.method == "exact" and zeros.patterns == 64
  for n in (1, 3, 8, 12):
    same = paired_tests.sign_flip_test(np.full(n, 1.3), np.full(n, 1.0))
    # Only all-plus and all-minus reach |Σ d| = n·0.3.
    assert same.p == pytest.approx(2 / 2**n) and same.n == n
  # Ties between patterns (equal sums, rounded differently) count: the
  # exact p, counted in integer tenths.
  tenths = np.array([1, 2, 3, -1, 4, 2, -3, 1])
  signs = np.array(list(itertools.product([-1, 1], repeat=8)))
  expected = np.mean(np.abs(signs @ tenths) >= abs(tenths.sum()))
  ties = paired_tests.sign_flip_test(tenths / 10 + 0.7, np.full(8, 0.7))
  assert ties.p == expected and 0.1 < expected < 0.5
  dropped = paired_tests.sign_flip_test([0.5, None, 0.5], [0.0, 1.0, 0.0])
  assert dropped.n == 2 and dropped.p == pytest.approx(0.5)


def test_sign_flip_monte_carlo_above_the_exact_limit():
  rng = np.random.default_rng(7)
  d = rng.normal(0.5, 1.0, 16)
  exact = paired_tests.sign_flip_test(d, np.zeros(16))
  drawn = paired_tests.sign_flip_test(d, np.zeros(16), max_exact=15)
  assert (exact.method, drawn.method) == ("exact", "monte carlo")
  assert drawn.patterns == paired_tests.SIGN_FLIP_DRAWS
  # A Monte Carlo p is a binomial share of 20,000 draws.
  assert abs(drawn.p - exact.p) <= 3 * math.sqrt(
      exact.p * (1 - exact.p) / drawn.patterns) + 1 / drawn.patterns
  # 17 identical differences: exact p 2/2^17; Monte Carlo reports about
  # 1/(draws + 1) (it counts the observed pattern, so never 0).
  same = paired_tests.sign_flip_test(np.ones(17), np.zeros(17))
  assert same.method == "monte carlo"
  assert 0 < same.p <= 4 / (paired_tests.SIGN_FLIP_DRAWS + 1)


def test_sign_flip_agrees_with_the_t_test_on_normal_data():
  studies, n = 200, 10
  rng = np.random.default_rng(8)
  shift = rng.uniform(0.0, 1.2, (studies, 1))  # p-values spread over (0, 1)
  x, y = correlated_pairs(rng, (studies, n), 0.5)
  x = x + shift
  flip = paired_tests.sign_flip_test(x, y).p
  t = paired_tests.paired_t_test(x, y).p
  assert flip.shape == (studies,)
  assert np.corrcoef(flip, t)[0, 1] > 0.95


def test_sign_flip_size_on_heavy_tailed_symmetric_differences():
  draws = 2000
  rng = np.random.default_rng(9)
  d = rng.standard_t(2, (draws, 8))  # symmetric, far from normal
  rate = np.mean(paired_tests.sign_flip_test(d, np.zeros_like(d)).p <= ALPHA)
  # Exact for any symmetric distribution; p is a multiple of 1/128 and
  # P(p ≤ 6/128) = 6/128 = 0.047, the size.
  assert abs(rate - 6 / 128) <= tolerance(6 / 128, draws)


# --------------------------------------------------------------------------
# Holm's correction and compatible intervals
# --------------------------------------------------------------------------


def test_holm_rows_is_holms_adjustment():
  adjusted = paired._holm_rows(np.array([0.01, 0.04, 0.03, 0.005]))  # pylint: disable=protected-access
  assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
  rng = np.random.default_rng(10)
  p = rng.uniform(0, 0.1, (50, 5))
  p[::7, 2] = np.nan
  rows = paired._holm_rows(p)  # pylint: disable=protected-access
  for row, out in zip(p, rows):
    finite = np.flatnonzero(np.isfinite(row))
    order = finite[np.argsort(row[finite])]
    m = len(order)
    expected = np.full(row.shape, np.nan)
    for i, k in enumerate(order):
      expected[k] = min(1.0, max((m - j) * row[order[j]] for j in range(i + 1)))
    np.testing.assert_allclose(out, expected)


def simulate_family(rng, draws, theta, n=8):
  """Paired tests of m arms against one shared reference, per study."""
  theta = np.asarray(theta)
  seed_effect = rng.normal(0.0, 1.0, (draws, 1, n))  # shared by all arms
  reference = seed_effect + rng.normal(0.0, 0.5, (draws, 1, n))
  arms = (seed_effect + theta[:, None] +
          rng.normal(0.0, 0.5, (draws, len(theta), n)))
  return paired_tests.paired_t_test(arms, np.broadcast_to(reference, arms.shape))


@pytest.mark.parametrize("theta", [(0.0, 0.3, 0.6, 1.0),
                                   (0.7, -0.8, 1.0, 0.0),
                                   (0.9, -1.0, 1.1, 1.2)])
def test_holm_intervals_agree_with_decisions_and_cover(theta):
  draws = 3000
  rng = np.random.default_rng(11)
  test = simulate_family(rng, draws, theta)
  holm = paired.holm_intervals(test.diff, test.se, test.df)
  low, high, rejected, diff = holm.low, holm.high, holm.rejected, test.diff
  np.testing.assert_allclose(holm.p, test.p)
  assert np.array_equal(rejected, holm.p_holm <= ALPHA)
  # What the docstring claims, on every comparison of every study:
  # rejected ⇔ the interval ends at 0 on the far side from diff;
  # not rejected ⇔ 0 lies strictly inside.
  up = rejected & (diff > 0)
  down = rejected & (diff < 0)
  assert np.all(low[up] == 0.0) and np.all(high[up] > 0)
  assert np.all(high[down] == 0.0) and np.all(low[down] < 0)
  assert np.all((low[~rejected] < 0) & (high[~rejected] > 0))
  assert np.array_equal(rejected, (low >= 0) | (high <= 0))
  # The simulation reaches the step-down cases (some but not all rejected,
  # and in the third setting all rejected), not only Bonferroni's.
  r = rejected.sum(axis=-1)
  assert np.mean((r > 0) & (r < len(theta))) > 0.1
  if 0.0 not in theta:
    assert np.mean(r == len(theta)) > 0.1
  # Simultaneous coverage ≥ 1 − α, under the arms' shared reference.
  covered = np.all((low <= np.asarray(theta)) &
                   (np.asarray(theta) <= high), axis=-1)
  assert np.mean(covered) >= 1 - ALPHA - tolerance(ALPHA, draws)


def test_holm_intervals_where_bonferroni_would_contradict_holm():
  df = np.full(3, 20.0)
  # p = 0.001, 0.02, 0.3: Holm rejects the first two (0.02 ≤ 0.05/2) while
  # Bonferroni's 0.05/3 interval of the second covers 0.
  diff = stats.t.isf(np.array([0.001, 0.02, 0.3]) / 2, df)
  holm = paired.holm_intervals(diff, np.ones(3), df)
  assert holm.rejected.tolist() == [True, True, False]
  bonferroni_low = diff - stats.t.ppf(1 - ALPHA / 6, df)
  assert bonferroni_low[1] < 0
  assert holm.low[:2].tolist() == [0.0, 0.0]
  # The non-rejected one at level 2α/(2m − r) = 0.025, narrower than
  # Bonferroni's 0.0167.
  c = stats.t.ppf(1 - ALPHA / 4, 20)
  assert (holm.low[2], holm.high[2]) == pytest.approx(
      (diff[2] - c, diff[2] + c))
  assert c < stats.t.ppf(1 - ALPHA / 6, 20)


def test_holm_intervals_without_rejections_are_bonferroni():
  df = np.full(4, 7.0)
  diff = np.array([0.1, -0.2, 0.3, 0.0])
  se = np.array([0.2, 0.2, 0.3, 0.1])
  holm = paired.holm_intervals(diff, se, df)
  assert not holm.rejected.any() and holm.family == 4
  c = stats.t.ppf(1 - ALPHA / 8, 7)
  np.testing.assert_allclose(holm.low, diff - c * se)
  np.testing.assert_allclose(holm.high, diff + c * se)
  # A comparison without a p-value is outside the family.
  out = paired.holm_intervals([0.1, 0.5], [0.0, 0.1], [4, 4])
  assert out.family == 1 and math.isnan(out.low[0])


# --------------------------------------------------------------------------
# Readings and compare_paired
# --------------------------------------------------------------------------


def test_reading_gives_each_of_the_four_readings():
  assert paired.reading(0.02, 0.01, 0.3, 0.01) == "differs (higher)"
  assert paired.reading(-0.02, 0.01, 0.3, 0.01) == "differs (lower)"
  assert paired.reading(0.001, 0.5, 0.01, 0.01) == "equivalent within ±0.01"
  assert paired.reading(0.004, 0.01, 0.01, 0.01) == (
      "differs but within ±0.01")
  assert paired.reading(0.01, 0.2, 0.2, 0.01) == "inconclusive"
  # No margin: equivalence is never claimed; NaN p claims nothing.
  assert paired.reading(0.0, 0.5, 0.001, None) == "inconclusive"
  assert paired.reading(0.1, math.nan, math.nan, 0.01) == "inconclusive"
  # The level is the boundary.
  assert paired.reading(0.1, ALPHA, 1.0, 0.01) == "differs (higher)"


def centred(rng, sd, n):
  e = rng.normal(0.0, sd, n)
  return e - e.mean()  # mean exactly 0: a known mean difference


def test_compare_paired_reads_a_constructed_sweep():
  rng = np.random.default_rng(12)
  seeds = list(range(12))
  base = rng.normal(0.90, 0.02, 12)  # per-seed level, shared by all arms
  arms = {
      "higher": base + 0.05 + centred(rng, 0.002, 12),
      "lower": base - 0.05 + centred(rng, 0.002, 12),
      "same": base + centred(rng, 0.002, 12),
      "small": base + 0.004 + centred(rng, 0.001, 12),
      "noisy": base + centred(rng, 0.05, 12),
  }
  values = {"fp": dict(zip(seeds, base))}
  values.update({k: dict(zip(seeds, v)) for k, v in arms.items()})
  pairs = [(arm, "fp") for arm in arms]
  out = paired.compare_paired(values, pairs, "accuracy", margin=0.01)
  readings = {c.arm: c.reading for c in out}
  assert readings == {
      "higher": "differs (higher)",
      "lower": "differs (lower)",
      "same": "equivalent within ±0.01",
      "small": "differs but within ±0.01",
      "noisy": "inconclusive",
  }
  for c in out:
    assert c.family == 5 and c.n == 12 and c.metric == "accuracy"
    assert c.correlation > 0.5 or c.arm == "noisy"
    # The reported interval agrees with the Holm decision.
    if c.p_holm <= ALPHA:
      assert c.ci_low >= 0 or c.ci_high <= 0
    else:
      assert c.ci_low < 0 < c.ci_high
    assert c.sign_flip_method == "exact"
  p = {c.arm: c.p for c in out}
  p_holm = {c.arm: c.p_holm for c in out}
  np.testing.assert_allclose(
      [p_holm[a] for a in arms], paired._holm_rows([p[a] for a in arms]))  # pylint: disable=protected-access
  # Without a margin no equivalence is read.
  bare = paired.compare_paired(values, pairs, "accuracy")
  assert {c.arm: c.reading for c in bare}["same"] == "inconclusive"
  assert all(math.isnan(c.p_tost) for c in bare)


def test_compare_paired_pairs_by_seed_not_position():
  rng = np.random.default_rng(13)
  level = {s: rng.normal(0, 1) for s in range(8)}
  reference = {s: level[s] for s in [5, 3, 0, 7, 1, 2, 6]}  # no seed 4
  arm = {s: level[s] + 0.3 + rng.normal(0, 0.1) for s in range(8)}
  arm[6] = None
  arm[2] = math.nan
  arm[9] = 1.0  # a seed the reference never ran
  (c,) = paired.compare_paired({"w4": arm, "fp": reference}, [("w4", "fp")])
  assert c.seeds == (0, 1, 3, 5, 7)
  assert dict(c.dropped) == {
      2: "arm value missing or not finite",
      4: "no run of the reference",
      6: "arm value missing or not finite",
      9: "no run of the reference",
  }
  x = [arm[s] for s in c.seeds]
  y = [reference[s] for s in c.seeds]
  ref = stats.ttest_rel(x, y)
  assert c.n == 5 and c.p == pytest.approx(ref.pvalue)
  assert c.diff == pytest.approx(np.mean(np.subtract(x, y)))
  # Paired by position instead, the seeds' levels would not cancel.
  assert c.correlation > 0.9
  # A pair with one seed is reported but not tested.
  (lone,) = paired.compare_paired({"a": {0: 1.0}, "b": {0: 0.5, 1: 0.2}},
                                  [("a", "b")], margin=0.1)
  assert lone.n == 1 and lone.family == 0 and math.isnan(lone.p_holm)
  assert lone.reading == "inconclusive"


# --------------------------------------------------------------------------
# Dose-response
# --------------------------------------------------------------------------

LOG_NOISE = np.log([0.002, 0.005, 0.012, 0.03, 0.07])
EFFECT_SE = np.array([0.004, 0.004, 0.006, 0.008, 0.012])


def test_dose_response_is_weighted_least_squares():
  rng = np.random.default_rng(14)
  effects = 0.01 + 0.004 * LOG_NOISE + rng.normal(0, 1, 5) * EFFECT_SE
  fit = dose_response.dose_response(effects, EFFECT_SE, LOG_NOISE)
  # Reference: OLS on rows scaled by 1/se.
  design = np.stack([np.ones(5), LOG_NOISE], axis=1) / EFFECT_SE[:, None]
  coef, residual, *_ = np.linalg.lstsq(design, effects / EFFECT_SE,
                                       rcond=None)
  cov = residual[0] / 3 * np.linalg.inv(design.T @ design)
  assert (fit.intercept, fit.slope) == pytest.approx(tuple(coef))
  assert fit.se == pytest.approx(math.sqrt(cov[1, 1]))
  assert fit.df == 3 and fit.points == 5
  assert fit.p == pytest.approx(
      2 * stats.t.sf(abs(coef[1]) / math.sqrt(cov[1, 1]), 3))
  with np.errstate(invalid="ignore"):
    short = dose_response.dose_response([0.1, 0.2], [0.1, 0.1], [0.0, 1.0])
  assert math.isnan(short.p)


@pytest.mark.parametrize("slope", [0.0, 0.012])
def test_dose_response_size_and_power(slope):
  rng = np.random.default_rng(15)
  effects = (0.01 + slope * LOG_NOISE +
             rng.normal(0, 1, (N, 5)) * EFFECT_SE)
  rate = np.mean(dose_response.dose_response(effects, EFFECT_SE, LOG_NOISE).p
                 <= ALPHA)
  # Normal errors with variance ∝ se²: the WLS t is exactly noncentral t
  # with df 3 and ncp slope·√Σw(x − x̄_w)² (size α at slope 0).
  w = 1 / EFFECT_SE**2
  x_bar = np.sum(w * LOG_NOISE) / w.sum()
  ncp = slope * math.sqrt(np.sum(w * (LOG_NOISE - x_bar)**2))
  crit = stats.t.ppf(1 - ALPHA / 2, 3)
  power = stats.nct.sf(crit, 3, ncp) + stats.nct.cdf(-crit, 3, ncp)
  assert abs(rate - power) <= tolerance(power, N)
  if slope:
    assert power > 0.6  # the test detects this slope most of the time


def simulate_seeds(rng, draws, seeds, slope, x):
  """Per-seed values of a reference and arms at log noise x, per study."""
  level = rng.normal(0.9, 0.03, (draws, seeds, 1))  # shared by a seed's arms
  seed_slope = rng.normal(0.0, 0.002, (draws, seeds, 1))  # seed × noise
  reference = level + rng.normal(0, 0.005, (draws, seeds, 1))
  arms = (level + (slope + seed_slope) * (x - x.mean()) +
          rng.normal(0, 0.005, (draws, seeds, len(x))))
  return reference, arms


def test_per_seed_trend_matches_per_seed_regressions():
  rng = np.random.default_rng(16)
  x = LOG_NOISE[:4]
  reference, arms = simulate_seeds(rng, 1, 6, 0.004, x)
  effects = (arms - reference)[0]
  effects[2, 1] = np.nan  # seed 2 fits on its 3 other arms
  fit = dose_response.per_seed_trend(effects, x)
  slopes = []
  for row in effects:
    keep = np.isfinite(row)
    slopes.append(stats.linregress(x[keep], row[keep]).slope)
  ref = stats.ttest_1samp(slopes, 0.0)
  np.testing.assert_allclose(fit.slopes, slopes)
  assert fit.slope == pytest.approx(np.mean(slopes))
  assert fit.p == pytest.approx(ref.pvalue)
  assert fit.points == 6 and fit.df == 5
  # The mapping form and seed_effects give the same fit.
  values = {"fp": dict(enumerate(reference[0, :, 0]))}
  for j, name in enumerate(["w8", "w6", "w4", "w2"]):
    values[name] = dict(enumerate(arms[0, :, j]))
  values["w6"][2] = None
  seeds, matrix = dose_response.seed_effects(values, ["w8", "w6", "w4", "w2"], "fp")
  assert seeds == list(range(6))
  np.testing.assert_allclose(matrix, effects)
  by_seed = dose_response.per_seed_trend(dict(zip(seeds, matrix)), x)
  assert by_seed.p == pytest.approx(fit.p)


@pytest.mark.parametrize("slope", [0.0, 0.006])
def test_per_seed_trend_size_and_power(slope):
  seeds = 6
  x = LOG_NOISE[:4]
  rng = np.random.default_rng(17)
  reference, arms = simulate_seeds(rng, N, seeds, slope, x)
  fit = dose_response.per_seed_trend(arms - reference, x)
  assert fit.p.shape == (N,)
  rate = np.mean(fit.p <= ALPHA)
  # The reference run is common to a seed's arms and cancels in its
  # slope; each slope is N(slope, τ² + σ²/Sxx), independent over seeds, so
  # the t-test of the slopes is exactly noncentral t with df seeds − 1.
  sxx = np.sum((x - x.mean())**2)
  sd_slope = math.sqrt(0.002**2 + 0.005**2 / sxx)
  ncp = slope * math.sqrt(seeds) / sd_slope
  crit = stats.t.ppf(1 - ALPHA / 2, seeds - 1)
  power = (stats.nct.sf(crit, seeds - 1, ncp) +
           stats.nct.cdf(-crit, seeds - 1, ncp))
  assert abs(rate - power) <= tolerance(power, N)
  if slope:
    assert power > 0.6
