import csv

import numpy as np
import pytest

from kqreg import report


def _record(bits, seed, gap_loss, val_acc, history_len=30, noise=None):
  result = {"train_accuracy": 1.0, "val_accuracy": val_acc, "test_accuracy": val_acc,
            "train_loss": 0.01, "val_loss": 0.01 + gap_loss, "gap_accuracy": 1.0 - val_acc,
            "gap_loss": gap_loss, "best_val_loss": 0.01 + gap_loss - 0.05,
            "last_epoch_val_loss": 0.01 + gap_loss, "noise": noise}
  # Falls to a minimum at epoch 15, then climbs 0.01 per epoch (overfitting),
  # with a ±0.001 jitter.
  history = [{"epoch": e, "val_loss": gap_loss + 0.01 * abs(e - 15) + 0.001 * (-1) ** e}
             for e in range(history_len)]
  return report.RunRecord(bits, seed, result, history)


def _sweep():
  return ([_record("fp", s, 0.50 + 0.01 * s, 0.90 + 0.001 * s) for s in range(3)] +
          [_record("w4", s, 0.20 + 0.01 * s, 0.93 + 0.001 * s,
                   noise={"delta_std": 0.01, "model_std": 0.0101}) for s in range(3)] +
          [_record("w8", s, 0.50 + 0.02 * s, 0.90 + 0.002 * s,
                   noise={"delta_std": 0.0006, "model_std": 0.0006}) for s in range(3)])


def test_aggregate_means_and_sample_stds():
  rows = report.aggregate(_sweep(), ["fp", "w8", "w4"])
  assert [r["bits"] for r in rows] == ["fp", "w8", "w4"]
  fp = rows[0]
  assert fp["seeds"] == 3
  assert fp["gap_loss_mean"] == pytest.approx(0.51)
  assert fp["gap_loss_std"] == pytest.approx(0.01)
  assert fp["noise_std_mean"] is None
  assert rows[2]["noise_model_std_mean"] == pytest.approx(0.0101)


def test_verdict_separates_real_differences_from_seed_noise():
  lines = report.verdict(report.aggregate(_sweep(), ["fp", "w8", "w4"]))
  w4 = next(l for l in lines if l.startswith("- w4"))
  w8 = next(l for l in lines if l.startswith("- w8"))
  assert "loss gap -0.300 vs fp, smaller beyond the seed spread" in w4
  assert "loss gap +0.010 vs fp, within the seed spread" in w8
  assert "no difference shown" in w8
  assert lines[0].startswith("- fp: validation loss (moving average) ends 0.123 above its "
                             "minimum, beyond twice")
  assert lines[0].endswith("it overfits.")


def test_val_loss_rise_reads_through_epoch_jitter():
  rng = np.random.default_rng(0)
  epochs = np.arange(60)
  falling = 1.0 / (1 + 0.1 * epochs) + rng.normal(0, 0.05, 60)  # noisy, no overfit
  rise, noise, window = report.val_loss_rise(falling)
  assert window == 6 and rise < 2 * noise
  u_shaped = 0.5 + 0.01 * np.abs(epochs - 20) + rng.normal(0, 0.02, 60)
  rise, noise, _ = report.val_loss_rise(u_shaped)
  assert rise == pytest.approx(0.37, abs=0.05) and rise > 2 * noise
  assert report.val_loss_rise([1.0, 0.9, 0.8]) is None  # too short to tell


def test_verdict_with_one_seed_says_it_cannot_judge():
  records = [_record("fp", 0, 0.5, 0.9), _record("w4", 0, 0.2, 0.9)]
  lines = report.verdict(report.aggregate(records, ["fp", "w4"]))
  assert "one seed: no spread to judge against" in lines[-1]


def test_verdict_without_fp_run():
  records = [_record("w4", 0, 0.2, 0.9)]
  assert "No `fp` run" in report.verdict(report.aggregate(records, ["w4"]))[0]


def test_write_report_writes_table_csvs_and_plots(tmp_path):
  out = report.write_report(str(tmp_path), _sweep(), ["fp", "w8", "w4"],
                            command="kqreg-sweep --x", wall_time_s=90)
  for name in ("report.md", "results.csv", "runs.csv", "val_loss.png", "gap.png", "noise.png"):
    path = tmp_path / name
    assert path.exists() and path.stat().st_size > 0, name
  assert (tmp_path / "val_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  text = (tmp_path / "report.md").read_text()
  assert out["table"] in text and "kqreg-sweep --x" in text and "1.5 min for 9 runs" in text
  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["bits"] for r in rows] == ["fp", "w8", "w4"]
  assert {"gap_loss_mean", "gap_loss_std", "val_accuracy_mean", "noise_std_mean"} <= set(rows[0])
  with open(tmp_path / "runs.csv", newline="") as f:
    assert len(list(csv.DictReader(f))) == 9
