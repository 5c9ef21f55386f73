"""The sweep report's decision on synthetic sweeps (no training).

Paired effects with Holm-compatible intervals, one reading per arm and
metric under the declared margins, the dose-response fit and its figure,
the positive control, and Welch only where the seeds differ.
"""

import csv
import math

import numpy as np
import pytest

from kqreg.study.sweep import arms as arms_lib
from kqreg.study.sweep import decision
from kqreg.study.sweep.records import RunRecord
from kqreg.study.sweep import report

EPOCHS = 30
SEEDS = range(8)
MARGINS = {"val_accuracy": 0.02, "val_loss": 0.05}
NOISE = {"w8": 0.0008, "w6": 0.0032, "w4": 0.0134, "w2": 0.081,
         "n8": 0.00079, "n4": 0.0132}
# Effect on the final validation loss (arm − fp): grows with log std(δ) for
# the quantizers; the twins do what their quantizer does; the positive
# control (weight decay) lowers it clearly.
LOSS_EFFECT = {"fp": 0.0, "w8": 0.0, "w6": -0.02, "w4": -0.05, "w2": -0.10,
               "n8": 0.0, "n4": -0.05, "fp+weight_decay=0.01": -0.15}
ARMS = ["fp", "w8", "w6", "w4", "w2", "n8", "n4", "fp+weight_decay=0.01"]


def _record(arm, seed, shared, rng):
  loss = 1.1 + shared + LOSS_EFFECT[arm] + rng.normal(0, 0.015)
  acc = 0.67 - shared / 5 + rng.normal(0, 0.004)
  curve = loss + 0.4 / (1 + 0.5 * np.arange(EPOCHS)) + rng.normal(
      0, 0.01, EPOCHS)
  noise = ({"delta_std": NOISE[arm] * (1 + rng.normal(0, 0.01)),
            "model_std": NOISE[arm]} if arm in NOISE else None)
  result = {"train_accuracy": 0.8, "val_accuracy": acc, "train_loss": 0.7,
            "val_loss": loss, "best_val_loss": float(curve.min()),
            "gap_loss": loss - 0.7, "gap_accuracy": 0.8 - acc,
            "noise": noise, "wall_time_s": 20.0}
  history = [{"epoch": float(e), "val_loss": float(v)}
             for e, v in enumerate(curve)]
  return RunRecord(arm, seed, result, history)


def _sweep(arms=ARMS, seeds=SEEDS):
  rng = np.random.default_rng(7)
  out = []
  for seed in seeds:
    shared = rng.normal(0, 0.12)  # what seed s gives every arm alike
    out += [_record(arm, seed, shared, rng) for arm in arms]
  return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  path = tmp_path_factory.mktemp("decision")
  records = _sweep()
  # An arm run on other seeds: only it is compared by Welch.
  NOISE["w3"], LOSS_EFFECT["w3"] = 0.03, -0.07
  rng = np.random.default_rng(3)
  records += [_record("w3", s, rng.normal(0, 0.12), rng)
              for s in range(100, 105)]
  # Few null arms for the overfitting test's measured false-positive rate:
  # its own tests (test_overfitting_calibration.py) measure it properly.
  out = report.write_report(str(path), records, ARMS + ["w3"],
                            margins=MARGINS, calibration_draws=20)
  return path, out


def test_margins_parse_and_refuse():
  assert decision.parse_margins("val_accuracy:0.02,val_loss:0.05") == MARGINS
  assert decision.parse_margins("") == {}
  for bad in ("val_loss", "val_loss:0", "val_loss:-1", "val_loss:x",
              "val_loss:0.1,val_loss:0.2"):
    with pytest.raises(ValueError):
      decision.parse_margins(bad)
  with pytest.raises(ValueError, match="compares"):
    decision.parse_margins("test_loss:0.1", ["val_loss"])


def test_arms_with_settings_parse():
  assert arms_lib.parse_arm("w4") == ("w4", {})
  assert arms_lib.parse_arm("fp+weight_decay=1e-3+optimizer=sgd") == (
      "fp", {"weight_decay": 0.001, "optimizer": "sgd"})
  assert arms_lib.arm_slug("fp+weight_decay=1e-3") == "fp_weight_decay_1e_3"
  for bad in ("+weight_decay=1", "fp+weight_decay", "fp+seed=3",
              "fp+a=1+a=2"):
    with pytest.raises(arms_lib.ArmError):
      arms_lib.parse_arm(bad)
  assert decision.positive_controls(ARMS) == ["fp+weight_decay=0.01"]
  assert arms_lib.weight_bits("n4+weight_decay=0.01") == 4
  assert ("fp+weight_decay=0.01", "fp") in arms_lib.comparison_pairs(ARMS)


def test_paired_effects_carry_intervals_matching_the_readings(written):
  _, out = written
  paired = out["paired"]
  pairs = arms_lib.comparison_pairs(ARMS + ["w3"])
  assert len(paired) == len(pairs) * 4  # 4 metrics, one Holm family each
  for c in paired:
    if c["arm"] == "w3":  # no common seed with fp: not paired
      assert c["n"] == 0 and c["reading"] == "inconclusive"
      continue
    assert c["n"] == 8 and math.isfinite(c["ci_low"])
    assert c["sign_flip_method"] == "exact"
    differs = c["reading"].startswith("differs")
    # The printed interval is the decision rule's (Holm-compatible).
    assert differs == (not c["ci_low"] < 0 < c["ci_high"]), c
    assert c["margin"] == MARGINS.get(c["metric"])
  by = {(c["arm"], c["reference"], c["metric"]): c for c in paired}
  assert by["w2", "fp", "val_loss"]["reading"] == "differs (lower)"
  assert by["w2", "fp", "val_loss"]["correlation"] > 0.8  # shared seed spread
  assert by["w8", "fp", "val_loss"]["reading"] == "equivalent within ±0.05"
  assert by["n4", "w4", "val_loss"]["reading"] in (
      "equivalent within ±0.05", "inconclusive")
  # No margin declared for the loss gap: no TOST, no equivalence claim.
  assert math.isnan(by["w8", "fp", "gap_loss"]["p_tost"])


def test_report_prints_readings_margins_and_no_mdd_claim(written):
  path, out = written
  text = (path / "report.md").read_text()
  assert "Equivalence margins (declared before the run): val acc ±0.02, " \
         "final val loss ±0.05" in text
  assert "MDD says what was ruled out" not in text
  assert "### Readings" in text and "| w8 | " in text
  assert "differs (lower)" in text and "equivalent within ±0.05" in text
  w2 = next(l for l in out["verdict"] if l.startswith("- w2: loss gap"))
  assert "simultaneous CI" in w2 and "sign-flip p" in w2 and "pairs r" in w2
  with open(path / "comparisons.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert {"p_sign_flip", "correlation", "p_tost", "reading"} <= set(rows[0])


def test_welch_only_where_seeds_differ(written):
  path, out = written
  assert {(c["arm"], c["reference"]) for c in out["unpaired"]} == {
      ("w3", "fp")}
  assert any(l.startswith("- w3 (unpaired: other seeds than fp, Welch):")
             for l in out["verdict"])
  text = (path / "report.md").read_text()
  assert "Welch's t-test, only where the seeds differ" in text


def test_dose_response_fit_and_figure(written):
  path, out = written
  doses = {(d["metric"], d["family"]): d for d in out["dose_response"]}
  q = doses["val_loss", "quantizers"]
  assert q["arms"] == "w8 w6 w4 w3 w2" or q["arms"] == "w8 w6 w4 w2 w3"
  assert q["trend_slope"] < 0 and q["trend_p"] < 0.05
  assert q["trend_ci_low"] < q["trend_slope"] < q["trend_ci_high"] < 0
  assert ("val_loss", "quantizers and twins") in doses
  png = (path / "dose_response.png").read_bytes()
  assert png[:4] == b"\x89PNG"
  # One panel per compared metric, at most two a row: legible on a page.
  width, height = (int.from_bytes(png[16:20], "big"),
                   int.from_bytes(png[20:24], "big"))
  metrics = {metric for metric, _ in doses}
  assert len(metrics) >= 3 and width <= 1.5 * height, (width, height)
  assert any("per-seed trend test" in l and "slope" in l
             for l in out["verdict"])
  assert (path / "dose_response.csv").exists()


def test_positive_control_is_read(written):
  _, out = written
  line = next(l for l in out["verdict"]
              if l.startswith("- Positive control fp+weight_decay=0.01"))
  assert "differs (lower)" in line and "detected" in line
  assert "NOT detected" not in line


def test_positive_control_not_detected_is_said():
  LOSS_EFFECT["fp+weight_decay=0.01"], saved = 0.0, LOSS_EFFECT[
      "fp+weight_decay=0.01"]
  try:
    records = _sweep(["fp", "w4", "fp+weight_decay=0.01"], range(3))
  finally:
    LOSS_EFFECT["fp+weight_decay=0.01"] = saved
  lines = report.verdict(records, ["fp", "w4", "fp+weight_decay=0.01"],
                         margins=MARGINS)
  line = next(l for l in lines if l.startswith("- Positive control"))
  assert "NOT detected" in line


def test_mixed_precision_reads_its_comparisons_the_same_way():
  from kqreg.study import mixed_precision as mp  # pylint: disable=g-import-not-at-top
  arms = [mp.Arm("A", "uniform", "w4a8"), mp.Arm("A", "allocated", "auto:4")]
  rng = np.random.default_rng(1)
  records = []
  for seed in range(6):
    base = 0.9 + rng.normal(0, 0.02)  # what the seed gives both arms
    for arm, shift in (("w4a8", 0.0), ("auto:4", 0.001)):
      records.append({"bits": arm, "seed": seed,
                      "val_accuracy": base + shift + rng.normal(0, 0.002),
                      "tflite_accuracy": base + shift + rng.normal(0, 0.002)})
  rows = mp._compare(records, arms, range(6))  # pylint: disable=protected-access
  assert [r["metric"] for r in rows] == ["val_accuracy", "tflite_accuracy"]
  for r in rows:
    assert r["margin"] == mp.EQUIVALENCE_MARGIN
    assert r["reading"] == "equivalent within ±0.01", r
    assert r["ci_low"] < 0 < r["ci_high"] and r["p_tost"] <= 0.05
