"""The equal-size comparison's pieces: arms, paired test, ranking."""

import numpy as np
import pytest
import tf_keras
from scipy import stats

from kqreg.mixed_precision import budget as budget_lib
from kqreg.study import mixed_precision as mp


def _model():
  return tf_keras.Sequential([
      tf_keras.Input((12, 12, 1)),
      tf_keras.layers.Conv2D(8, 3, name="c1"),
      tf_keras.layers.Conv2D(16, 3, name="c2"),
      tf_keras.layers.GlobalAveragePooling2D(),
      tf_keras.layers.Dense(10, name="head")])


def test_arms_give_allocation_the_rules_size():
  model = _model()
  arms = {(a.budget, a.kind): a.bits for a in mp.arms_for(model)}
  high = mp.policy_size(model, mp.RULE_HIGH)
  low = mp.policy_size(model, mp.RULE_LOW)
  assert arms[("A", "allocated")] == f"auto:{high['weight_bytes']}B"
  budget = budget_lib.parse_budget(arms[("B", "allocated")][5:])
  assert budget.value <= low["mean_bits"] < budget.value + 1e-4
  # Uniform arms are no larger than their budget's rule.
  assert mp.policy_size(model, "w4a8")["weight_bytes"] <= high["weight_bytes"]
  assert mp.policy_size(model, "w2a8")["mean_bits"] <= low["mean_bits"]


def test_policy_size_counts_int4_and_int8_kernels():
  model = _model()
  size = mp.policy_size(model, "w4a8,last=w8a8")
  # c1 72 + c2 1152 kernels at INT4, head 160 at INT8.
  assert size["weight_bytes"] == 36 + 576 + 160
  assert size["mean_bits"] == pytest.approx((4 * 1224 + 8 * 160) / 1384)


def test_paired_test_matches_scipy():
  rng = np.random.default_rng(0)
  x, y = rng.normal(0.9, 0.01, 5), rng.normal(0.89, 0.01, 5)
  test = mp.paired_test(x, y)
  assert test["p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
  assert test["ci_low"] < test["diff"] < test["ci_high"]
  assert mp.paired_test(x, x)["p"] != mp.paired_test(x, x)["p"]  # NaN


def test_ranking_is_spearman_per_bits():
  rows = [{"layer": f"l{i}", "bits": 2, "predicted": float(i),
           "measured": float(-i), "loss_increase": float(i) ** 2}
          for i in range(5)]
  out = {r["ranked_by"]: r["spearman_rho"] for r in mp.ranking(rows)}
  assert out == {"predicted": pytest.approx(1.0),
                 "measured": pytest.approx(-1.0)}
