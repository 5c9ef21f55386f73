"""kqreg.export.latency on a tiny float file and its int8 twin.

No timing thresholds (machines differ): only positivity, finiteness and
ordering are checked.
"""

import doctest
import importlib.util
import json
import math
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow

try:
  import kqreg  # noqa: F401  (Keras 2 before TensorFlow)
  from kqreg.export import latency
except Exception:  # pylint: disable=broad-except
  # The package failed to import (mid-restructuring): load the file alone.
  _PATH = os.path.join(os.path.dirname(__file__), os.pardir, "kqreg",
                       "export", "latency.py")
  _SPEC = importlib.util.spec_from_file_location("kqreg_export_latency",
                                                 _PATH)
  latency = importlib.util.module_from_spec(_SPEC)
  sys.modules[_SPEC.name] = latency
  _SPEC.loader.exec_module(latency)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

BUDGET_S = 0.05  # per thread count: the tests stay fast


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """{"float": path, "int8": path} of Conv2D(8) on 8x8x1 + Dense(10)."""
  tf_keras.utils.set_random_seed(0)
  model = tf_keras.Sequential([
      tf_keras.Input((8, 8, 1)),
      tf_keras.layers.Conv2D(8, 3, activation="relu"),
      tf_keras.layers.Flatten(),
      tf_keras.layers.Dense(10),
  ])
  folder = tmp_path_factory.mktemp("latency")
  paths = {"float": str(folder / "float.tflite"),
           "int8": str(folder / "int8.tflite")}
  with open(paths["float"], "wb") as f:
    f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
  rng = np.random.default_rng(0)
  converter = tf.lite.TFLiteConverter.from_keras_model(model)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: (
      [rng.random((1, 8, 8, 1), dtype=np.float32)] for _ in range(16))
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.inference_input_type = tf.int8
  converter.inference_output_type = tf.int8
  with open(paths["int8"], "wb") as f:
    f.write(converter.convert())
  return paths


@pytest.fixture(scope="module")
def reports(files):
  return {name: latency.measure_latency(path, budget_s=BUDGET_S)
          for name, path in files.items()}


def _check_timing(t, threads):
  assert t.threads == threads
  for value in (t.q1_ms, t.median_ms, t.q3_ms):
    assert math.isfinite(value) and value > 0
  assert t.q1_ms <= t.median_ms <= t.q3_ms
  assert t.repeats >= latency.MIN_REPEATS


def test_report_has_one_thread_and_all_cores(files, reports):
  for name, report in reports.items():
    assert set(report.timings) == {"1", "all"}
    _check_timing(report.timings["1"], 1)
    _check_timing(report.timings["all"], os.cpu_count())
    assert report.file_bytes == os.path.getsize(files[name]) > 0
    assert report.batch == 1 and report.budget_s == BUDGET_S
    assert report.median_ms(1) == report.timings["1"].median_ms
    assert report.median_ms(None) == report.timings["all"].median_ms


def test_default_resolver_applies_xnnpack(files, reports):
  assert reports["float"].op_resolver == "AUTO"
  assert reports["float"].default_delegate_applied is True
  plain = latency.measure_latency(
      files["float"], threads=(1,), repeats=20,
      op_resolver="BUILTIN_WITHOUT_DEFAULT_DELEGATES")
  assert plain.op_resolver == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
  assert plain.default_delegate_applied is False
  with pytest.raises(ValueError, match="op_resolver"):
    latency.measure_latency(files["float"], op_resolver="FAST")


def test_int_io_detected_from_input_dtype(files, reports):
  assert reports["int8"].int_io is True
  assert reports["int8"].input_dtypes == ("int8",)
  assert reports["float"].int_io is False
  assert reports["float"].input_dtypes == ("float32",)
  # Random ints over the int8 range are what the interpreter receives.
  interp = latency._interpreter(open(files["int8"], "rb").read(),  # pylint: disable=protected-access
                                files["int8"], 1, "AUTO")
  (value,) = latency._prepare(interp, files["int8"], 1,  # pylint: disable=protected-access
                              np.random.default_rng(0))
  detail = interp.get_input_details()[0]
  assert value.dtype == np.int8 and value.shape == (1, 8, 8, 1)
  assert value.min() < 0 < value.max()
  np.testing.assert_array_equal(interp.get_tensor(detail["index"]), value)
  interp.invoke()
  assert interp.get_tensor(
      interp.get_output_details()[0]["index"]).dtype == np.int8
  # An explicit int_io is checked against the file.
  checked = latency.measure_latency(files["int8"], threads=(1,), repeats=20,
                                    int_io=True)
  assert checked.int_io is True
  with pytest.raises(ValueError, match="int_io"):
    latency.measure_latency(files["int8"], threads=(1,), int_io=False)
  with pytest.raises(ValueError, match="int_io"):
    latency.measure_latency(files["float"], threads=(1,), int_io=True)


def test_fixed_repeats_and_batch(files):
  report = latency.measure_latency(files["int8"], threads=(1, 2), repeats=25,
                                   batch=3)
  assert set(report.timings) == {"1", "2"}
  assert [t.repeats for t in report.timings.values()] == [25, 25]
  assert report.batch == 3 and report.budget_s is None
  _check_timing(report.timings["2"], 2)


def test_ratio_to_divides_medians(reports):
  ratios = reports["int8"].ratio_to(reports["float"])
  assert set(ratios) == {"1", "all"}
  for key, ratio in ratios.items():
    assert ratio == (reports["int8"].timings[key].median_ms /
                     reports["float"].timings[key].median_ms)
    assert math.isfinite(ratio) and ratio > 0
  assert reports["float"].ratio_to(reports["float"]) == {"1": 1.0, "all": 1.0}


def test_as_dict_is_json(reports):
  for report in reports.values():
    back = json.loads(json.dumps(report.as_dict()))
    assert back["file_bytes"] == report.file_bytes
    assert back["timings"]["1"]["median_ms"] == report.timings["1"].median_ms
    assert back["int_io"] == report.int_io


def test_latency_table(reports):
  table = latency.latency_table(reports)
  lines = table.splitlines()
  assert "ratio to float, 1 thread" in lines[0]
  assert "ratio to float, all cores" in lines[0]
  assert len(lines) == 2 + len(reports)
  for name, report in reports.items():
    row = next(line for line in lines if line.startswith(f"| {name} |"))
    assert f"| {report.file_bytes} |" in row
  assert lines[2].endswith("| 1.00 | 1.00 |")  # float against itself
  no_float = latency.latency_table({"int8": reports["int8"]})
  assert "ratio" not in no_float and "| int8 |" in no_float


def test_op_profile_reports_why_unavailable(files):
  found, probe_reason = latency._profiler_probe()  # pylint: disable=protected-access
  timings, reason = latency.op_profile(files["int8"])
  # ai-edge-litert 2.3.0 exposes no op profiler to Python: the reason comes
  # back instead of timings, naming what was searched.
  assert timings is None
  assert reason == probe_reason
  assert "ai-edge-litert" in reason
  if not found:
    assert "no per-op profiler" in reason
    assert "InterpreterWrapper" in reason
  with pytest.raises(FileNotFoundError):
    latency.op_profile(files["int8"] + ".missing")


def test_bad_inputs(files, tmp_path):
  with pytest.raises(FileNotFoundError):
    latency.measure_latency(str(tmp_path / "missing.tflite"))
  junk = tmp_path / "junk.tflite"
  junk.write_bytes(b"not a flatbuffer")
  with pytest.raises(ValueError, match="TFLite"):
    latency.measure_latency(str(junk))
  with pytest.raises(ValueError, match="threads"):
    latency.measure_latency(files["float"], threads=(0,))
  with pytest.raises(ValueError, match="repeats"):
    latency.measure_latency(files["float"], repeats=0)


def test_doctests():
  result = doctest.testmod(latency, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0
  assert result.failed == 0
