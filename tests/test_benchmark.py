"""The benchmark's --quick run writes its files with their columns (no timing asserts)."""

import json
import re

import pytest

import trainer_process  # tests/trainer_process.py


def test_quick_benchmark_writes_json_and_markdown(tmp_path):
  result = trainer_process.run("trainers.benchmark", "--quick",
                               f"--output_dir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  data = json.loads((tmp_path / "benchmark.json").read_text())
  assert data["quick"] is True
  assert {"cpu", "cores", "tensorflow", "tfmot"} <= set(data["machine"])
  variants = [row["variant"] for row in data["step_time"]]
  assert variants == ["float", "tfmot_8bit", "kqreg_w8a8", "kqreg_w8a8_frozen", "kqreg_w4a8",
                      "kqreg_w4"]
  assert all(row["step_ms"] > 0 and row["ratio"] > 0 for row in data["step_time"])
  assert {"epoch_s_without", "epoch_s_with", "ratio", "callback_s_per_epoch",
          "callback_share"} <= set(data["callback"])
  assert all({"params", "weight_noise_s", "propagation_s"} <= set(r) for r in data["noise_cost"])
  formats = [row["format"] for row in data["tflite"]]
  assert formats == ["float32", "int8 (w8a8)", "int4 (w4a8)",
                     "int4 grid in int8 (w4a8, speed)"]
  sizes = [row["file_bytes"] for row in data["tflite"]]
  assert sizes[2] < sizes[1] < sizes[0]
  # The same w4a8 model: its conv kernels in INT8 containers, its dense ones
  # packed as before, so the file is larger than the packed one.
  assert sizes[2] < sizes[3] < sizes[0]
  assert [row["variant"] for row in data["memory"]] == ["float", "kqreg_w4a8"]
  # The peers table: every tool on the same float model and batches. kqreg's
  # own row must train and export (its errors propagate); a peer may only
  # fail with a note. kqreg's file holds its kernels on the 4-bit grid.
  peers = {row["tool"]: row for row in data["peers"]["rows"]}
  assert list(peers) == ["float", "kqreg", "tfmot_nbit", "qkeras", "larq"]
  assert peers["float"]["ratio"] == 1.0
  kqreg_row = peers["kqreg"]
  assert kqreg_row["note"] == "" and kqreg_row["bits"] == "w4a8"
  assert 0.0 <= kqreg_row["accuracy"] <= 1.0 and kqreg_row["ratio"] > 0
  assert kqreg_row["exported"] is True and kqreg_row["float_ops"] == 0
  assert kqreg_row["kernels"].startswith("INT4 x")
  assert 1 < kqreg_row["kernel_levels"] <= 15  # w4: 2^4 - 1 levels at most
  for row in peers.values():
    assert row["note"] or row["accuracy"] is not None, row
  text = (tmp_path / "benchmark.md").read_text()
  assert [row["workers"] for row in data["sweep"]] == [1, 2]
  assert all(row["runs"] == 2 and row["runs_per_minute"] > 0 for row in data["sweep"])
  for heading in ("Training step time", "NoiseAnalysisCallback", "Noise analysis cost",
                  "TFLite", "Peers", "Peak resident memory", "Targets",
                  "Sweep throughput"):
    assert heading in text
  assert text in result.stdout
  # The sign is timing noise in a quick run (CI once measured tfmot faster than float).
  assert re.search(r"\| cnn: w8a8 overhead <= half of stock tfmot's \| tfmot [+-]\d+%", text)
  assert "| cnn: w8a8 (frozen ranges) overhead <= half of stock tfmot's |" in text
  assert "| packed int4 TFLite <= 0.15x float file |" in text
  assert re.search(r"\| w4a8 storage=speed latency within 10% of w8a8 \| "
                   r"\d+\.\d\dx w8a8 \|", text)


def test_targets_are_judged_from_the_numbers():
  from kqreg.study.benchmark import report as benchmark
  step = [{"model": "cnn", "variant": v, "jit": False, "ratio": r}
          for v, r in (("float", 1.0), ("tfmot_8bit", 1.40), ("kqreg_w8a8", 1.15),
                       ("kqreg_w8a8_frozen", 1.25), ("kqreg_w4", 1.08))]
  results = {"step_time": step, "callback": {"callback_share": 0.015},
             "tflite": [{"format": "float32", "size_ratio": 1.0, "latency_ratio": 1.0},
                        {"format": "int8 (w8a8)", "size_ratio": 0.26, "latency_ratio": 1.3,
                         "latency_ms": 0.50},
                        {"format": "int4 (w4a8)", "size_ratio": 0.16, "latency_ratio": 1.2},
                        {"format": "int4 grid in int8 (w4a8, speed)", "size_ratio": 0.2,
                         "latency_ms": 0.54}]}
  rows = {r["target"]: r for r in benchmark.check_targets(results)}
  overhead = rows["cnn: w8a8 overhead <= half of stock tfmot's"]
  assert overhead["holds"] is True and overhead["measured"] == "tfmot +40%, kqreg w8a8 +15%"
  frozen = rows["cnn: w8a8 (frozen ranges) overhead <= half of stock tfmot's"]
  assert frozen["holds"] is False and frozen["measured"].endswith("kqreg w8a8 (frozen ranges) +25%")
  assert rows["cnn: w4 within 5% of float"]["holds"] is False
  assert rows["noise callback < 2% of epoch time"]["holds"] is True
  assert rows["int8 TFLite <= 0.27x float file"]["holds"] is True
  assert rows["int8 TFLite latency <= 1.0x float"]["holds"] is False
  assert rows["packed int4 TFLite <= 0.15x float file"]["holds"] is False
  speed = rows["w4a8 storage=speed latency within 10% of w8a8"]
  assert speed["holds"] is True and speed["measured"] == "1.08x w8a8"
  results["tflite"][3]["latency_ms"] = 0.60
  rows = {r["target"]: r for r in benchmark.check_targets(results)}
  assert rows["w4a8 storage=speed latency within 10% of w8a8"]["holds"] is False


def _timed(variant, rounds):
  import numpy as np
  ratio = float(np.exp(np.mean(np.log(rounds))))
  low, high = min(rounds), max(rounds)
  return {"model": "resnet20", "variant": variant, "jit": False, "ratio": ratio,
          "ratio_ci": [low, high], "round_ratios": list(rounds)}


def test_step_time_targets_are_judged_on_their_intervals():
  from kqreg.study.benchmark import report as benchmark
  tflite = [{"format": "float32", "size_ratio": 1.0, "latency_ratio": 1.0}]

  def judged(tfmot, w8a8, w4):
    results = {"step_time": [_timed("float", [1.0] * len(tfmot)),
                             _timed("tfmot_8bit", tfmot), _timed("kqreg_w8a8", w8a8),
                             _timed("kqreg_w4", w4)],
               "callback": {"callback_share": 0.01}, "tflite": tflite}
    rows = {r["target"]: r for r in benchmark.check_targets(results)}
    return (rows["resnet20: w8a8 overhead <= half of stock tfmot's"],
            rows["resnet20: w4 within 5% of float"])

  # Every round: kqreg's overhead well under half of tfmot's; w4 at most +3%.
  overhead, w4 = judged([1.80, 1.70, 1.75, 1.78], [1.15, 1.20, 1.10, 1.16],
                        [1.01, 1.03, 1.00, 1.02])
  assert overhead["holds"] is True and w4["holds"] is True
  assert "n = 4" in overhead["measured"] and "[" in w4["measured"]
  # Clearly above the limits.
  overhead, w4 = judged([1.40, 1.42, 1.38, 1.41], [1.35, 1.36, 1.33, 1.37],
                        [1.10, 1.12, 1.09, 1.11])
  assert overhead["holds"] is False and w4["holds"] is False
  # Rounds that straddle the limits decide nothing, in either direction.
  overhead, w4 = judged([1.40, 1.60, 1.20, 1.50], [1.15, 1.40, 1.05, 1.20],
                        [1.00, 1.10, 1.02, 1.08])
  assert overhead["holds"] == benchmark.UNDECIDED and w4["holds"] == benchmark.UNDECIDED
  text = benchmark.markdown({"quick": True, "machine": {
      "cpu": "x", "cores": 2, "tensorflow": "t", "tf_keras": "k", "tfmot": "m"},
      "step_time": [], "callback": {"epoch_s_without": 1, "epoch_s_with": 1,
                                    "ratio": 1, "callback_s_per_epoch": 0,
                                    "callback_share": 0}, "noise_cost": [],
      "tflite": [], "memory": []})
  assert "95% interval" in text


def test_paired_ratios_are_geometric_means_with_intervals():
  from kqreg.study.benchmark import step_timing
  result = step_timing.paired_ratios(
      {"float": [1.0, 2.0, 1.0, 2.0], "q": [1.5, 3.0, 1.5, 3.0],
       "noisy": [1.0, 4.0, 1.5, 2.0]}, "float")
  assert result["float"]["ratio"] == 1.0 and result["float"]["ratio_low"] == 1.0
  # The same 1.5x in every round despite a slow machine: an interval of width 0.
  assert abs(result["q"]["ratio"] - 1.5) < 1e-12
  assert abs(result["q"]["ratio_high"] - result["q"]["ratio_low"]) < 1e-12
  noisy = result["noisy"]
  assert noisy["ratio_low"] < noisy["ratio"] < noisy["ratio_high"]
  assert noisy["round_ratios"] == [1.0, 2.0, 1.5, 1.0]


def _tiny(units):
  import tf_keras
  inputs = tf_keras.Input((4, 4, 1))
  x = tf_keras.layers.Flatten()(inputs)
  return tf_keras.Model(inputs, tf_keras.layers.Dense(units)(x))


def test_paired_step_times_rounds_and_failures():
  from kqreg.study.benchmark import step_timing as benchmark
  models = {"float": _tiny(10), "other": _tiny(10), "broken": _tiny(1)}
  timed = benchmark.paired_step_times(models, (4, 4, 1), batch_size=8, steps=2,
                                      repeats=4, warmup=1)
  assert list(timed) == ["float", "other", "broken"]
  assert timed["float"]["ratio"] == 1.0
  other = timed["other"]
  assert other["step_s"] > 0 and other["ratio_low"] <= other["ratio"] <= other["ratio_high"]
  # Labels 0..9 do not fit one logit: the model is reported, not timed.
  assert "InvalidArgumentError" in timed["broken"]["error"]
  with pytest.raises(RuntimeError, match="baseline 'broken' failed"):
    benchmark.paired_step_times({"broken": _tiny(1)}, (4, 4, 1), baseline="broken",
                                batch_size=8, steps=1, repeats=1, warmup=1)


def test_a_timed_step_is_one_optimizer_step_without_retracing():
  import numpy as np
  from kqreg.study.benchmark import step_timing
  model = _tiny(10)
  step = step_timing.training_step(model, (4, 4, 1), batch_size=8)
  before = [w.numpy().copy() for w in model.trainable_weights]
  step()
  # One trace: the optimizer's slots and the loss accumulator exist before it.
  assert model.train_function.experimental_get_tracing_count() == 1
  for _ in range(3):
    step()
  # Every call is one optimizer step of the train function `fit` would run:
  # no per-call data adapter, no retracing.
  assert int(model.optimizer.iterations.numpy()) == 4
  assert model.train_function.experimental_get_tracing_count() == 1
  assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))


# Only third-party tools fail softly ------------------------------------------

def _peer_data():
  import numpy as np
  rng = np.random.default_rng(0)
  return {"x_train": rng.random((128, 8, 8, 1), dtype=np.float32),
          "y_train": np.arange(128) % 10,
          "x_val": rng.random((32, 8, 8, 1), dtype=np.float32),
          "y_val": np.arange(32) % 10}


def _one_logit(model):
  """`model` with a 1-unit head: labels 0..9 make its training step fail."""
  import tf_keras
  return tf_keras.Model(model.inputs, tf_keras.layers.Dense(1)(model.outputs[0]))


def _third_party_peers():
  from kqreg.study.benchmark import peers

  class Missing(peers.Peer):
    name, module, distribution = "missing", "kqreg_test_no_such_module", "missing"

    def unsupported(self, model):
      return []

    def build(self, model, weight_bits, activation_bits=8):
      raise AssertionError("never built: not importable")

  class ImportsLate(Missing):
    """Imports fine, then its build needs a module that is not there."""
    name, module = "imports_late", "math"

    def build(self, model, weight_bits, activation_bits=8):
      import kqreg_test_no_such_module  # noqa: F401  pylint: disable=import-error,unused-import

  class FailsToTrain(Missing):
    name, module = "fails_to_train", "math"

    def build(self, model, weight_bits, activation_bits=8):
      return _one_logit(model)

  return [Missing(), ImportsLate(), FailsToTrain()]


def _compare(peers, references=("kqreg",)):
  from kqreg.study.benchmark import peer_rows
  return peer_rows.peer_comparison(_peer_data(), [("mlp", {"hidden": (4,)})],
                                   bits=(4,), epochs=1, peers=peers,
                                   references=references)


def test_a_peers_import_error_is_a_note_and_kqregs_rows_stay_whole():
  rows = {r["tool"]: r for r in _compare(_third_party_peers())}
  assert rows["missing"]["note"] == (
      "not importable (No module named 'kqreg_test_no_such_module')")
  assert rows["imports_late"]["note"] == (
      "ModuleNotFoundError: No module named 'kqreg_test_no_such_module'")
  assert rows["fails_to_train"]["note"].startswith("InvalidArgumentError")
  for tool in ("missing", "imports_late", "fails_to_train"):
    assert rows[tool]["accuracy"] is None and rows[tool]["exported"] is None
  for tool in ("float", "kqreg"):
    assert rows[tool]["note"] == "" and 0 <= rows[tool]["accuracy"] <= 1
  assert rows["kqreg"]["exported"] is True


def test_a_peer_failing_before_its_first_step_is_a_note(monkeypatch):
  # paired_training builds every model's optimizer slots before its first
  # step; a third-party model that fails there is a row's note, as it would
  # be at its first step.
  import tf_keras
  from kqreg.study.benchmark import peer_rows, peers
  build_step_state = peer_rows._tfmot.build_step_state  # pylint: disable=protected-access

  def refuse(model, y_true, y_pred=None):
    if model.name == "refused":
      raise ValueError("no slots for this optimizer")
    return build_step_state(model, y_true, y_pred)

  class Refused(peers.Peer):
    name, module, distribution = "refused", "math", "refused"

    def unsupported(self, model):
      return []

    def build(self, model, weight_bits, activation_bits=8):
      return tf_keras.Model(model.inputs, model.outputs, name="refused")

  monkeypatch.setattr(peer_rows._tfmot, "build_step_state", refuse)  # pylint: disable=protected-access
  rows = {r["tool"]: r for r in _compare([Refused()])}
  assert rows["refused"]["note"] == "ValueError: no slots for this optimizer"
  assert rows["refused"]["accuracy"] is None
  assert rows["kqreg"]["note"] == "" and 0 <= rows["kqreg"]["accuracy"] <= 1


def test_kqregs_own_errors_propagate(monkeypatch):
  from kqreg.export import ExportError
  from kqreg.study.benchmark import peer_rows, peers
  quantize = peer_rows.quantize

  def broken_quantize(model, policy):
    raise RuntimeError("kqreg bug in quantize")

  # Building: the exception itself, not a row's note.
  monkeypatch.setattr(peer_rows, "quantize", broken_quantize)
  with pytest.raises(RuntimeError, match="kqreg bug in quantize"):
    _compare(_third_party_peers())
  # Training: kqreg's model fails its step (as the peer above does softly).
  monkeypatch.setattr(peer_rows, "quantize",
                      lambda model, policy: _one_logit(quantize(model, policy)))
  import tensorflow as tf
  with pytest.raises(tf.errors.InvalidArgumentError):
    _compare([])
  # Exporting: the converter's own error, raised again for kqreg's row.
  monkeypatch.setattr(peer_rows, "quantize", quantize)

  def refuse(*args, **kwargs):
    raise ExportError("TFLite conversion failed: boom")

  monkeypatch.setattr(peers.converter, "convert", refuse)
  with pytest.raises(ExportError, match="boom"):
    _compare([])


def test_only_stock_tfmots_step_time_row_may_carry_an_error():
  from kqreg.study.benchmark import suite
  ok = {"model": "cnn", "jit": False, "note": ""}
  rows = [dict(ok, variant="float"), dict(ok, variant="kqreg_w8a8"),
          dict(ok, variant="tfmot_8bit", note="InvalidArgumentError: XLA")]
  assert suite._own_rows_succeeded(rows) is rows  # pylint: disable=protected-access
  rows.append(dict(ok, variant="kqreg_w4", jit=True, note="ValueError: bad"))
  with pytest.raises(RuntimeError, match=r"cnn kqreg_w4 \(jit=True\): ValueError: bad"):
    suite._own_rows_succeeded(rows)  # pylint: disable=protected-access


def test_sweep_table_names_its_setting_from_the_rows():
  from kqreg.study.benchmark import report as benchmark
  text = benchmark.markdown({"quick": True, "machine": {
      "cpu": "x", "cores": 2, "tensorflow": "t", "tf_keras": "k", "tfmot": "m"},
      "step_time": [], "callback": {"epoch_s_without": 1, "epoch_s_with": 1,
                                    "ratio": 1, "callback_s_per_epoch": 0,
                                    "callback_share": 0}, "noise_cost": [],
      "tflite": [], "memory": [],
      "sweep": [{"workers": 2, "runs": 8, "epochs": 30, "train_examples": 500,
                 "label_noise": 0.25, "seconds": 120.0, "runs_per_minute": 4.0}]})
  assert "8 runs of the label-noise study's model and data (30 epochs, 500 images, " \
         "25% label noise" in text
  assert "| 2 | 8 | 120.0 | 4.00 |" in text
