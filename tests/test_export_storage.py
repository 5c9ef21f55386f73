"""export_tflite's `storage` ("size", "speed", "auto") and its latency fields.

A tiny untrained CNN (Conv2D, DepthwiseConv2D, 1x1 Conv2D, Dense head) whose
activation ranges come from one training-mode call: deterministic, so the
"size" file can be pinned by its sha256 as written before `storage` existed.
No timing thresholds: latency fields are only checked positive and finite.
"""

import hashlib
import math
from unittest import mock

import kqreg
import kqreg.qat
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from kqreg import export
from kqreg.export import storage as storage_lib
from kqreg.qat import quantizers
from kqreg.runs import config as run_config

from test_export import _file_kernel_as_keras  # tests/test_export.py

L = tf_keras.layers
BUDGET_S = 0.03  # per thread count and file: the tests stay fast

# sha256 of export_tflite(qat_model(policy), float_reference=False[, int_io])
# computed with kqreg before `storage` existed (TF 2.21.0, 2026-12-06).
TODAY_SHA256 = {
    ("w4a8", False): "6932c5679ab37183fc9fa1f5479d626b4d0d2278b2883929c081e5a524d452d9",
    ("w3a8", False): "16aad889ca405de34e07c95be3a2f4fce79709375c9cee3b8612ff6eb78e9982",
    ("w4a8", True): "32775d36937f7de7205e2cd0bfbaa94b59e57dbab3a5050daee699806007c25f",
}
PINNED_TF = "2.21.0"


def _tiny_model():
  tf_keras.backend.clear_session()  # the same layer and tensor names each time
  tf_keras.utils.set_random_seed(0)
  i = tf_keras.Input((8, 8, 1), name="image")
  x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(i)
  x = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
  x = L.Conv2D(16, 1, activation="relu", name="pw")(x)
  x = L.GlobalAveragePooling2D(name="pool")(x)
  return tf_keras.Model(i, L.Dense(10, name="head")(x), name="tiny_storage")


def _qat_model(policy):
  qat = kqreg.quantize(_tiny_model(), policy)
  x = np.random.default_rng(0).random((64, 8, 8, 1), dtype=np.float32)
  # Sets the activation ranges, at the decay the pinned files were made with
  # (tfmot's 0.999, kqreg's until 2026-12-06): the hashes pin the writer.
  with mock.patch.object(quantizers, "ACTIVATION_RANGE_DECAY", 0.999):
    qat(x, training=True)
  return qat, x


@pytest.fixture(scope="module")
def models():
  cache = {}

  def get(policy):
    if policy not in cache:
      cache[policy] = _qat_model(policy)
    return cache[policy]

  return get


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def _kernel_consts(info):
  roles = export.flatbuffer.roles(info)
  return {c["name"]: c for c in info["constants"]
          if roles[c["index"]] == "weights"}


@pytest.mark.parametrize("policy,int_io", sorted(TODAY_SHA256))
def test_size_is_todays_file_byte_for_byte(models, tmp_path, policy, int_io):
  qat, _ = models(policy)
  size = export.export_tflite(qat, str(tmp_path / "size.tflite"),
                              storage="size", int_io=int_io,
                              float_reference=False, latency=False)
  default = export.export_tflite(qat, str(tmp_path / "default.tflite"),
                                 int_io=int_io, float_reference=False,
                                 latency=False)
  data = _read(size["path"])
  assert data == _read(default["path"])
  assert storage_lib.DEFAULT_STORAGE == "size"
  if tf.__version__ == PINNED_TF:
    assert hashlib.sha256(data).hexdigest() == TODAY_SHA256[policy, int_io]
  assert {w["type"] for w in size["weights"] if w["role"] == "weights"} == {
      "INT4"}
  assert size["storage"] == "size" and size["storage_table"] is None
  for row in size["weights"]:
    if row["role"] == "weights":
      assert row["storage_reason"].startswith("INT4: storage='size'"), row


@pytest.fixture(scope="module")
def speed_and_size(models, tmp_path_factory):
  """{policy: (qat, size report, speed report)}, latency measured once."""
  out = tmp_path_factory.mktemp("storage")
  found = {}
  for policy in ("w4a8", "w3a8"):
    qat, _ = models(policy)
    size = export.export_tflite(qat, str(out / f"{policy}_size.tflite"),
                                storage="size", float_reference=False,
                                latency=False)
    speed = export.export_tflite(qat, str(out / f"{policy}_speed.tflite"),
                                 storage="speed",
                                 float_reference=policy == "w4a8",
                                 latency=policy == "w4a8",
                                 latency_budget_s=BUDGET_S)
    found[policy] = (qat, size, speed)
  return found


@pytest.mark.parametrize("policy", ["w4a8", "w3a8"])
def test_speed_holds_q_of_w_in_int8_where_int4_is_unpacked(speed_and_size,
                                                           policy):
  qat, size, speed = speed_and_size[policy]
  bits = int(policy[1])
  table = storage_lib.storage_table("speed")
  size_info = export.inspect_tflite(_read(size["path"]))
  info = export.inspect_tflite(_read(speed["path"]))
  size_kernels, kernels = _kernel_consts(size_info), _kernel_consts(info)
  assert set(kernels) == set(size_kernels)
  rows = {r["name"]: r for r in speed["weights"] if r["role"] == "weights"}
  ops = set()
  for name, const in kernels.items():
    row = rows[name]
    ops.add(row["op"])
    assert const["type"] == table[row["op"]] == row["type"], row
    assert row["storage_reason"].startswith(
        "INT8 container" if const["type"] == "INT8" else "INT4"), row
    # Same integers, same scales: only the container changed.
    np.testing.assert_array_equal(const["values"],
                                  size_kernels[name]["values"])
    np.testing.assert_array_equal(const["scales"],
                                  size_kernels[name]["scales"])
    assert np.abs(const["values"]).max() <= 2**(bits - 1) - 1
  assert ops == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
  # Every kernel is Q(w), the kernel QAT multiplies by.
  for qw in kqreg.qat.quantized_weights(qat):
    const = [c for n, c in kernels.items()
             if f"quant_{qw.layer_name}/" in n][0]
    q_of_w = qw.quantized().numpy()
    step = float(np.min(qw.grid()[2].numpy()))
    stored = _file_kernel_as_keras(const, q_of_w.shape).reshape(q_of_w.shape)
    np.testing.assert_allclose(stored, q_of_w, rtol=0, atol=1e-4 * step,
                               err_msg=f"{qw.layer_name} at {bits} bits")


def test_speed_file_computes_the_same_integers(speed_and_size, models):
  _, size, speed = speed_and_size["w4a8"]
  _, x = models("w4a8")
  a, _ = export.tflite_predict(size["path"], x[:8])
  b, _ = export.tflite_predict(speed["path"], x[:8])
  np.testing.assert_array_equal(a, b)


def test_auto_stores_int4_only_where_its_table_says(models, tmp_path):
  qat, _ = models("w4a8")
  report = export.export_tflite(qat, str(tmp_path / "auto.tflite"),
                                storage="auto", float_reference=False,
                                latency=False)
  table = storage_lib.storage_table("auto")
  assert report["storage"] == "auto" and report["storage_table"] == table
  seen = {}
  for row in report["weights"]:
    if row["role"] != "weights":
      continue
    expected = ("INT4" if row["op"] in storage_lib.INT4_NOT_SLOWER
                else "INT8")
    assert row["type"] == table[row["op"]] == expected, row
    assert "storage='auto'" in row["storage_reason"]
    seen[row["op"]] = row["type"]
  assert seen == {"CONV_2D": "INT8", "DEPTHWISE_CONV_2D": "INT8",
                  "FULLY_CONNECTED": "INT4"}


def _check_ms(values):
  assert set(values) == {"1", "all"}
  for value in values.values():
    assert math.isfinite(value) and value > 0


def test_report_has_latency_float_ratio_and_op_profile_reason(
    speed_and_size):
  _, _, report = speed_and_size["w4a8"]
  _check_ms(report["latency_ms"])
  _check_ms(report["float_latency_ms"])
  _check_ms(report["latency_ratio_to_float"])
  for key in ("1", "all"):
    assert report["latency_ratio_to_float"][key] == pytest.approx(
        report["latency_ms"][key] / report["float_latency_ms"][key])
  detail = report["latency"]
  assert detail["batch"] == 1 and detail["op_resolver"] == "AUTO"
  assert detail["timings"]["1"]["threads"] == 1
  assert detail["int_io"] is False
  assert report["float_latency"]["input_dtypes"] == ["float32"]
  assert "XNNPACK" in report["latency_note"]
  # ai-edge-litert 2.3.0 has no per-op profiler: the reason is recorded.
  assert (report["op_profile"] is None) == bool(report["op_profile_note"])
  summary = export.report_summary(report)
  assert summary["storage"] == "speed"
  assert summary["latency_ms"] == report["latency_ms"]
  assert summary["latency_ratio_to_float"] == report["latency_ratio_to_float"]


def test_int_io_file_is_timed_with_int8_inputs(models, tmp_path):
  qat, _ = models("w4a8")
  report = export.export_tflite(qat, str(tmp_path / "io.tflite"),
                                storage="auto", int_io=True,
                                float_reference=False,
                                latency_budget_s=BUDGET_S)
  _check_ms(report["latency_ms"])
  assert report["latency"]["int_io"] is True
  assert report["latency"]["input_dtypes"] == ["int8"]
  assert report["float_latency_ms"] is None
  assert report["latency_ratio_to_float"] is None


def test_float_export_is_its_own_latency_reference(tmp_path):
  model = _tiny_model()
  report = export.export_tflite(model, str(tmp_path / "fp.tflite"),
                                allow_float=True, storage="speed",
                                latency_budget_s=BUDGET_S)
  _check_ms(report["latency_ms"])
  assert report["latency_ratio_to_float"] == {"1": 1.0, "all": 1.0}
  assert all(r["type"] == "FLOAT32" for r in report["weights"]
             if r["role"] == "weights")


def test_latency_can_be_skipped_and_bad_storage_refused(models, tmp_path):
  qat, _ = models("w4a8")
  report = export.export_tflite(qat, str(tmp_path / "m.tflite"),
                                float_reference=False, latency=False)
  assert report["latency_ms"] is None and report["latency"] is None
  assert "latency=False" in report["latency_note"]
  with pytest.raises(export.ExportError, match="storage='fast'"):
    export.export_tflite(qat, str(tmp_path / "n.tflite"), storage="fast")


def test_run_config_storage_defaults_to_the_library_default():
  assert run_config.default_of(run_config.RunConfig, "storage") == (
      storage_lib.DEFAULT_STORAGE)
  assert "speed" in run_config.help_of(run_config.RunConfig, "storage")


def test_set_storage_restores_a_size_file_as_an_export_would(speed_and_size,
                                                             tmp_path):
  # For exports through code that takes no storage (export_detector).
  _, size, speed = speed_and_size["w4a8"]
  path = str(tmp_path / "later.tflite")
  with open(path, "wb") as f:
    f.write(_read(size["path"]))
  with open(size["report_path"]) as f, open(path + ".json", "w") as g:
    g.write(f.read())
  report = export.set_storage(path, "speed", latency_budget_s=BUDGET_S)
  assert _read(path) == _read(speed["path"])
  assert report["size_bytes"] == speed["size_bytes"]
  rows = {r["name"]: (r["type"], r["op"], r["storage_reason"])
          for r in report["weights"] if r["role"] == "weights"}
  assert rows == {r["name"]: (r["type"], r["op"], r["storage_reason"])
                  for r in speed["weights"] if r["role"] == "weights"}
  _check_ms(report["latency_ms"])
  with pytest.raises(export.ExportError, match="re-export"):
    export.set_storage(path, "auto")
