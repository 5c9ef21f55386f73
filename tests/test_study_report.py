"""kqreg.study.sweep.report and figures on a synthetic sweep (no training)."""

import csv

import numpy as np
import pytest

from kqreg.study.sweep import arms
from kqreg.study.sweep import analysis
from kqreg.study.sweep.records import DETECTION, RunRecord
from kqreg.study.sweep import report

EPOCHS = 40


def _record(bits, seed, gap_loss, val_acc, overfit, noise=None):
  rng = np.random.default_rng([seed, len(bits), int(1000 * gap_loss)])
  epochs = np.arange(EPOCHS)
  if overfit:  # falls to a minimum at epoch 12, then climbs
    curve = 0.2 + gap_loss + 0.01 * np.abs(epochs - 12)
  else:  # falls and stays flat
    curve = 0.2 + gap_loss + 0.5 / (1 + 0.5 * epochs)
  curve = curve + rng.normal(0, 0.01, EPOCHS)
  result = {"train_accuracy": 1.0, "val_accuracy": val_acc,
            "test_accuracy": val_acc, "train_loss": 0.01,
            "val_loss": 0.01 + gap_loss, "gap_accuracy": 1.0 - val_acc,
            "gap_loss": gap_loss, "best_val_loss": float(curve.min()),
            "noise": noise, "wall_time_s": 10.0}
  history = [{"epoch": float(e), "val_loss": float(v), "loss": 0.01}
             for e, v in enumerate(curve)]
  return RunRecord(bits, seed, result, history)


def _noise(std):
  return {"delta_std": std, "model_std": std * 1.01}


def _sweep(seeds=5):
  """fp overfits; w4 and its twin n4 have a smaller gap; w8 is fp."""
  jitter = [0.0, 0.01, -0.01, 0.02, -0.02, 0.005][:seeds]
  # w4's own small per-seed wobble (mean 0 over 5 seeds): paired with fp by
  # seed its difference has a spread, so the paired test is defined.
  own = [0.003, -0.003, 0.002, -0.002, 0.0, 0.001][:seeds]
  out = []
  for s, (j, k) in enumerate(zip(jitter, own)):
    out += [_record("fp", s, 0.50 + j, 0.90 + j / 10, True),
            _record("w8", s, 0.50 - j, 0.90 - j / 10, True, _noise(0.0005)),
            _record("w4", s, 0.20 + j + k, 0.93 + (j + k) / 10, False,
                    _noise(0.008)),
            _record("n4", s, 0.21 - j, 0.93, False, _noise(0.0081))]
  return out


ORDER = ["fp", "w8", "w4", "n4"]


def test_arms_pair_noise_twins_with_their_quantized_arm():
  assert arms.comparison_pairs(["fp", "w8", "w4", "n4", "n2"]) == [
      ("w8", "fp"), ("w4", "fp"), ("n4", "fp"), ("n2", "fp"), ("n4", "w4")]
  assert arms.quantized_partner("n4a8,first=w8", ["w4a8,first=w8"]) == (
      "w4a8,first=w8")
  assert arms.weight_bits("w4a8") == 4 and arms.weight_bits("fp") is None
  assert arms.comparison_pairs(["w4", "n4"]) == [("n4", "w4")]


def test_aggregate_means_and_sample_stds():
  rows = analysis.aggregate(_sweep(3), ORDER)
  assert [r["bits"] for r in rows] == ORDER
  fp = rows[0]
  assert fp["seeds"] == 3
  assert fp["gap_loss_mean"] == pytest.approx(0.50)
  assert fp["gap_loss_std"] == pytest.approx(0.01)
  assert fp["noise_std_mean"] is None
  assert rows[2]["noise_model_std_mean"] == pytest.approx(0.00808)


def test_compare_finds_the_real_difference_only():
  comparisons = analysis.compare(_sweep(), ORDER)
  by = {(c.arm, c.reference, c.metric): c for c in comparisons}
  assert {m for _, _, m in by} == {"gap_loss", "val_loss", "best_val_loss",
                                   "val_accuracy"}
  w4 = by["w4", "fp", "gap_loss"]
  assert w4.significant and w4.diff == pytest.approx(-0.30)
  assert w4.ci_low < -0.30 < w4.ci_high and w4.family == 4
  w8 = by["w8", "fp", "gap_loss"]
  assert not w8.significant and w8.mdd > abs(w8.diff)
  twin = by["n4", "w4", "gap_loss"]
  assert not twin.significant and twin.diff == pytest.approx(0.01)


def test_verdict_lines():
  lines = report.verdict(_sweep(), ORDER)
  assert lines[0].startswith("- fp: validation loss (running median) ends ")
  assert lines[0].endswith("it overfits.") and "5 of 5 seeds fire" in lines[0]
  w4_overfit = next(l for l in lines if l.startswith("- w4: validation"))
  assert w4_overfit.endswith("no overfitting shown.")
  w4 = next(l for l in lines if l.startswith("- w4: loss gap"))
  assert w4.startswith("- w4: loss gap -0.300 (95% simultaneous CI ")
  assert "differs (lower)" in w4 and "final val loss" in w4
  assert "sign-flip p" in w4 and "pairs r" in w4
  w8 = next(l for l in lines if l.startswith("- w8: loss gap"))
  assert "inconclusive" in w8 and "MDD" not in w8  # no margin declared
  assert any(l.startswith("- n4 vs w4: loss gap +0.010") for l in lines)
  assert not any(l.startswith("Warning") for l in lines)


def test_verdict_warns_with_few_seeds_and_skips_one_seed_arms():
  lines = report.verdict(_sweep(3), ORDER)
  assert lines[0].startswith("Warning: fewer than 5 seeds for fp (3), w8 (3)")
  records = [_record("fp", 0, 0.5, 0.9, True),
             _record("w4", 0, 0.2, 0.9, False)]
  lines = report.verdict(records, ["fp", "w4"])
  assert any("one seed has no spread" in l for l in lines)
  assert "loss gap -0.300 (not tested" in lines[-1]


def test_verdict_without_fp_run():
  records = [_record("w4", s, 0.2, 0.9, False) for s in range(2)]
  lines = report.verdict(records, ["w4"])
  assert any("No `fp` run" in l for l in lines)


def test_write_report_writes_tables_csvs_and_plots(tmp_path):
  out = report.write_report(str(tmp_path), _sweep(), ORDER,
                            command="kqreg-sweep --x", wall_time_s=90,
                            calibration_draws=20)
  for name in ("report.md", "results.csv", "runs.csv", "comparisons.csv",
               "val_loss.png", "gap.png", "noise.png"):
    path = tmp_path / name
    assert path.exists() and path.stat().st_size > 0, name
  assert (tmp_path / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  text = (tmp_path / "report.md").read_text()
  assert out["table"] in text and out["verdict_table"] in text
  assert "kqreg-sweep --x" in text and "3.0 min for 20 runs" not in text
  assert "1.5 min for 20 runs (all trained by this command;" in text
  assert "How the verdict is computed" in text and "α = 0.05" in text
  assert "| w4 | fp | loss gap | 5 | -0.300 |" in out["verdict_table"]
  assert "differs (lower)" in out["readings_table"]
  assert "Equivalence margins (declared before the run): none" in text
  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["bits"] for r in rows] == ORDER
  assert {"gap_loss_mean", "gap_loss_std", "val_accuracy_mean",
          "noise_std_mean", "best_val_loss_mean"} <= set(rows[0])
  with open(tmp_path / "runs.csv", newline="") as f:
    runs = list(csv.DictReader(f))
  assert len(runs) == 20 and {"val_loss_rise_p", "overfits"} <= set(runs[0])
  with open(tmp_path / "comparisons.csv", newline="") as f:
    assert len(list(csv.DictReader(f))) == 4 * 4  # 4 pairs x 4 metrics
  assert [o["arm"] for o in out["overfitting"]] == ORDER


def test_write_report_for_detection(tmp_path):
  records = _sweep(2)
  for r in records:
    r.result.update(val_map50=0.5, val_map=0.3)
    for h in r.history:
      h.update(val_map50=0.5, val_map=0.3)
  out = report.write_report(str(tmp_path), records, ORDER,
                            task=DETECTION, calibration_draws=20)
  for name in ("val_loss.png", "val_map50.png", "gap.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  text = (tmp_path / "report.md").read_text()
  assert "val mAP@0.5" in text and "- w4: loss gap" in text
  assert out["warnings"]


def test_the_wall_time_line_says_which_runs_were_read_back(tmp_path):
  records = _sweep(seeds=3)
  for r in records[:4]:
    r.result["skipped"] = True
  report.write_report(str(tmp_path / "some"), records, ORDER, wall_time_s=30,
                      calibration_draws=20)
  assert ("0.5 min for 12 runs (4 of the 12 had finished before this command and "
          "were read back, not retrained;") in (tmp_path / "some" / "report.md").read_text()
  for r in records:
    r.result["skipped"] = True
  report.write_report(str(tmp_path / "all"), records, ORDER, wall_time_s=6,
                      calibration_draws=20)
  assert ("0.1 min for 12 runs (all 12 had finished before this command and were "
          "read back, not retrained; the runs' own wall times add up to 2.0 min)") in (
              tmp_path / "all" / "report.md").read_text()
