"""Sweeps of several settings side by side (`kqreg.study.sweep.cross_setting`).

Synthetic comparisons.csv files stand in for finished sweeps: the pooling's
arithmetic, its size under a common null, its refusal of bad input, and the
`kqreg-sweep --combine` command line.
"""

import math
import os

import numpy as np
import pytest
from scipy import stats

import trainer_process  # tests/trainer_process.py
from kqreg.study.sweep import cross_setting as cs
from kqreg.study.sweep.tables import csv_text

ALPHA = 0.05


def _row(arm, metric, diff, sd, n=10, reference="fp", reading="inconclusive"):
  return {"arm": arm, "reference": reference, "metric": metric, "n": n,
          "diff": diff, "sd": sd, "ci_low": diff - 0.1, "ci_high": diff + 0.1,
          "p_holm": 0.5, "reading": reading}


def _write_sweep(folder, title, rows):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "comparisons.csv"), "w") as f:
    f.write(csv_text(rows))
  with open(os.path.join(folder, "report.md"), "w") as f:
    f.write(f"# {title}\n\nbody\n")
  return str(folder)


def _effect(setting, diff, se, arm="w4", metric="val_loss"):
  return cs.SettingEffect(setting, arm, "fp", metric, 10, diff, se,
                          math.nan, math.nan, math.nan, "inconclusive")


def test_random_effects_arithmetic():
  # Equal effects: the pooled estimate is theirs, Q = 0, τ² = 0, and the
  # Hartung–Knapp variance is floored at 1/Σw (not 0).
  pooled = cs.pooled_effects([_effect("a", 0.2, 0.1), _effect("b", 0.2, 0.1)])
  (p,) = pooled
  assert p.diff == pytest.approx(0.2) and p.q == pytest.approx(0.0)
  assert p.tau2 == 0.0 and p.se == pytest.approx(math.sqrt(0.1**2 / 2))
  assert p.df == 1.0 and p.settings == ("a", "b")
  # Unequal precision, no heterogeneity beyond chance: inverse-variance
  # weights (τ² = 0 when Q ≤ k − 1).
  effects = [_effect("a", 0.1, 0.1), _effect("b", 0.2, 0.2),
             _effect("c", 0.15, 0.1)]
  (p,) = cs.pooled_effects(effects)
  w = np.array([100.0, 25.0, 100.0])
  d = np.array([0.1, 0.2, 0.15])
  fixed = float(np.sum(w * d) / w.sum())
  assert p.q == pytest.approx(float(np.sum(w * (d - fixed)**2)))
  assert p.tau2 == 0.0 and p.diff == pytest.approx(fixed)
  assert p.i2 == 0.0 and p.q_p == pytest.approx(stats.chi2.sf(p.q, 2))


def test_disagreeing_settings_show_heterogeneity_and_widen():
  agree = cs.pooled_effects([_effect(s, 0.1, 0.02) for s in "abc"])[0]
  disagree = cs.pooled_effects([_effect("a", -0.3, 0.02),
                                _effect("b", 0.1, 0.02),
                                _effect("c", 0.5, 0.02)])[0]
  assert disagree.q_p < 0.001 and disagree.i2 > 0.9 and disagree.tau2 > 0
  assert disagree.se > 5 * agree.se
  assert disagree.reading == "inconclusive"
  assert agree.reading == "differs (higher)" and agree.ci_low == 0.0


def test_pooled_test_holds_its_size_under_a_common_null():
  # Three settings, no effect anywhere, different precisions: the pooled
  # arm-level test rejects at most α (plus Monte Carlo error).
  rng = np.random.default_rng(0)
  draws, fired = 2000, 0
  se = np.array([0.05, 0.1, 0.2])
  for _ in range(draws):
    d = rng.normal(0.0, se)
    (p,) = cs.pooled_effects([_effect(s, v, e) for s, v, e in
                              zip("abc", d, se)])
    fired += p.p <= ALPHA
  assert fired / draws <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / draws)


def test_holm_covers_the_arms_of_a_metric():
  effects = [_effect(s, 0.3, 0.02, arm=arm) for s in "abc"
             for arm in ("w8", "w4")]
  effects += [_effect(s, 0.0, 0.02, arm="w2", metric="val_accuracy")
              for s in "ab"]
  pooled = {(p.arm, p.metric): p for p in cs.pooled_effects(effects)}
  assert pooled[("w8", "val_loss")].p_holm == pytest.approx(
      min(1.0, 2 * pooled[("w8", "val_loss")].p))  # two arms, equal p
  assert pooled[("w2", "val_accuracy")].p_holm == pytest.approx(
      pooled[("w2", "val_accuracy")].p)  # its own family of one


def test_effects_in_one_setting_only_are_not_pooled():
  effects = [_effect("a", 0.1, 0.05), _effect("a", 0.1, 0.05, arm="w2"),
             _effect("b", 0.1, 0.05)]
  assert [(p.arm, p.settings) for p in cs.pooled_effects(effects)] == [
      ("w4", ("a", "b"))]


def test_write_cross_setting_files_and_table(tmp_path):
  a = _write_sweep(tmp_path / "cnn", "MNIST CNN", [
      _row("w4", "val_loss", -0.07, 0.3), _row("n4", "val_loss", 0.02, 0.3,
                                               reference="w4"),
      _row("w4", "val_accuracy", 0.01, 0.05, reading="equivalent within ±0.02")])
  b = _write_sweep(tmp_path / "vit", "MNIST ViT", [
      _row("w4", "val_loss", -0.12, 0.2), _row("w2", "val_loss", 0.3, 0.2)])
  out = cs.write_cross_setting(str(tmp_path / "out"), [a, b],
                               metrics=["val_loss", "val_accuracy"])
  for path in out["paths"]:
    assert os.path.getsize(path) > 0, path
  table = out["table"].splitlines()
  assert table[0] == ("| arm | metric | MNIST CNN | MNIST ViT | pooled "
                      "(random effects) |")
  w4 = next(line for line in table if line.startswith("| w4 | final val"))
  assert "-0.070" in w4 and "-0.120" in w4 and "I²" in w4
  twin = next(line for line in table if line.startswith("| n4 vs w4 |"))
  assert twin.endswith("| – | – |")  # one setting: nothing to pool
  acc = next(line for line in table if "val acc" in line)
  assert "equivalent within ±0.02" in acc
  assert [p["arm"] for p in out["pooled"]] == ["w4"]
  named = cs.write_cross_setting(str(tmp_path / "named"), [a, b],
                                 names=["cnn", "vit"])
  assert named["table"].splitlines()[0].startswith("| arm | metric | cnn | vit")


def test_bad_input_says_what_to_do(tmp_path):
  a = _write_sweep(tmp_path / "a", "A", [_row("w4", "val_loss", 0.1, 0.2)])
  with pytest.raises(ValueError, match="at least two"):
    cs.write_cross_setting(str(tmp_path / "o"), [a])
  with pytest.raises(FileNotFoundError, match="finished kqreg-sweep"):
    cs.write_cross_setting(str(tmp_path / "o"), [a, str(tmp_path / "none")])
  with pytest.raises(ValueError, match="one name per sweep"):
    cs.write_cross_setting(str(tmp_path / "o"), [a, a], names=["x"])
  with pytest.raises(ValueError, match="name them apart"):
    cs.write_cross_setting(str(tmp_path / "o"), [a, a])


def test_sweep_combine_command(tmp_path):
  a = _write_sweep(tmp_path / "a", "A", [_row("w4", "val_loss", 0.1, 0.2)])
  b = _write_sweep(tmp_path / "b", "B", [_row("w4", "val_loss", 0.2, 0.2)])
  out = tmp_path / "out"
  result = trainer_process.run("trainers.sweep", f"--combine={a},{b}",
                               "--setting_names=cnn,vit",
                               f"--output_dir={out}")
  assert result.returncode == 0, result.stderr
  assert "| w4 | final val loss |" in result.stdout
  assert os.path.isfile(out / "cross_setting.png")
  missing = trainer_process.run("trainers.sweep",
                                f"--combine={a},{tmp_path / 'nowhere'}",
                                f"--output_dir={tmp_path / 'out2'}")
  lines = missing.stderr.strip().splitlines()
  assert missing.returncode == 2 and len(lines) == 1, missing.stderr
  assert "no comparisons.csv" in lines[0]
  mixed = trainer_process.run("trainers.sweep", f"--combine={a},{b}",
                              "--seeds=1,2", f"--output_dir={out}")
  assert mixed.returncode == 2 and "--seeds trains a sweep" in mixed.stderr
