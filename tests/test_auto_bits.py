"""`--bits=auto:<budget>`: parsing, a run that allocates, resume, init_from."""

import json
import os
import shutil

import numpy as np
import pytest

from kqreg.mixed_precision import auto_policy as auto_bits
from kqreg.classification import task as classify
from kqreg import runs
from kqreg.classification import models as models_lib
from kqreg.qat.policy import BitPolicy, PolicyError
from kqreg.qat.profiles import profile

import trainer_process  # tests/trainer_process.py


def _config(tmp_path, name="run", **overrides):
  values = dict(model_dir=str(tmp_path / name), dataset="kqreg_digits",
                model="cnn", model_kwargs={"widths": (8, 16)}, bits="fp",
                epochs=1, batch_size=32, train_examples=64, verbose=0,
                noise_analysis=False)
  values.update(overrides)
  return classify.ClassifyConfig(**values)


@pytest.mark.parametrize("text", ["auto:4.0", "auto:0.15x", "auto:2KiB",
                                  "auto:3.5:w8a8,first=w8a8,last=w8a8",
                                  "auto:4:w8,skip=dense*"])
def test_auto_policies_round_trip_through_their_string(text):
  auto = auto_bits.parse(text)
  assert isinstance(auto, auto_bits.AutoPolicy)
  assert auto_bits.parse(str(auto)) == auto
  assert str(auto) == text


def test_auto_policy_keeps_the_base_activation_bits_and_pins():
  auto = auto_bits.parse("auto:3.5:w8a8,first=w8a8")
  assert auto.activation_bits == 8 and auto.base.first is not None
  assert {str(p.default) for p in auto.candidates()[1:]} == {
      f"w{b}a8" for b in auto.choices}


@pytest.mark.parametrize("text, message", [
    ("auto:", "budget"), ("auto:lots", "budget"), ("auto:4.0:n4", "noise"),
    ("auto:4.0:w9", "w9"), ("auto:-1", "budget")])
def test_bad_auto_policies_are_refused_naming_the_part(text, message):
  with pytest.raises(PolicyError, match=message):
    auto_bits.parse(text)


def test_plain_policies_stay_bit_policies():
  assert isinstance(auto_bits.parse("w4a8,first=w8"), BitPolicy)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
  path = tmp_path_factory.mktemp("float")
  runs.run(_config(path))
  return path / "run"


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
  path = tmp_path_factory.mktemp("auto")
  result = runs.run(_config(path, bits="auto:4.0"))
  return path / "run", result


def _copy(run_dir, tmp_path):
  target = tmp_path / "run"
  shutil.copytree(run_dir, target)
  return target


def test_auto_run_records_its_allocation_and_meets_the_budget(auto_run):
  run_dir, result = auto_run
  for name in ("allocation.json", "sensitivity.csv", "sensitivity.png"):
    assert (run_dir / name).exists(), name
  allocation = json.loads((run_dir / "allocation.json").read_text())
  assert result["bits"] == "auto:4.0"
  assert result["policy"] == allocation["policy"]
  assert result["allocation"] == allocation
  assert allocation["mean_bits"] <= 4.0
  params = json.loads((run_dir / "params.json").read_text())
  assert params["config"]["bits"] == "auto:4.0"
  # The run trained the chosen policy: its layers hold those bits.
  _, _, model = runs.load_run(str(run_dir))
  trained = {p.name.removeprefix("quant_"): p.weight_bits
             for p in profile(model).layers
             if p.weight_bits}
  assert trained == allocation["bits"]


def test_auto_run_resumes_with_the_recorded_policy(auto_run, tmp_path):
  run_dir = _copy(auto_run[0], tmp_path)
  # An interrupted run: the allocation is kept, the result not yet written.
  # A recorded policy other than the one measuring gives shows that the
  # rerun reads it back instead of measuring again.
  record = json.loads((run_dir / "allocation.json").read_text())
  assert record["policy"] != "w8a8,first=w2a8"
  record["policy"] = "w8a8,first=w2a8"
  (run_dir / "allocation.json").write_text(json.dumps(record))
  os.remove(run_dir / "result.json")
  again = runs.run(_config(tmp_path, bits="auto:4.0"))
  assert not again.get("skipped")
  assert again["policy"] == "w8a8,first=w2a8"


def test_allocation_of_other_flags_is_refused(auto_run, tmp_path):
  run_dir = _copy(auto_run[0], tmp_path)
  os.remove(run_dir / "result.json")
  os.remove(run_dir / "params.json")
  with pytest.raises(PolicyError, match="auto:4.0"):
    runs.run(_config(tmp_path, bits="auto:3.0"))


def _fresh_cnn(**kwargs):
  return models_lib.build("cnn", (32, 32, 1), 10, seed=0,
                          **{"widths": (8, 16), **kwargs})


def test_init_from_loads_the_float_runs_weights(float_run, tmp_path):
  _, _, trained = runs.load_run(str(float_run))
  config = _config(tmp_path, bits="w8", init_from=str(float_run))
  fresh = _fresh_cnn()
  runs.initial_weights(config).apply(fresh)
  for a, b in zip(fresh.get_weights(), trained.get_weights()):
    np.testing.assert_array_equal(a, b)


def test_init_from_refuses_another_architecture(float_run, tmp_path):
  config = _config(tmp_path, bits="w8", init_from=str(float_run))
  with pytest.raises(runs.ConfigError, match="architecture"):
    runs.initial_weights(config).apply(_fresh_cnn(widths=(4, 8)))


def test_init_from_refuses_a_quantized_run(float_run, tmp_path):
  run_dir = _copy(float_run, tmp_path / "source")
  params = json.loads((run_dir / "params.json").read_text())
  params["config"]["bits"] = "w4"
  (run_dir / "params.json").write_text(json.dumps(params))
  config = _config(tmp_path, bits="w8", init_from=str(run_dir))
  with pytest.raises(runs.ConfigError, match="--bits=fp"):
    runs.initial_weights(config)


def test_bits_flag_parses_auto_and_refuses_a_bad_budget():
  from kqreg_trainers import flags as kqreg_flags
  parser = kqreg_flags._PolicyParser()  # pylint: disable=protected-access
  assert str(parser.parse("auto:0.15x")) == "auto:0.15x"
  with pytest.raises(ValueError, match="budget"):
    parser.parse("auto:lots")


def test_sensitivity_cli_prints_the_table_and_a_policy(float_run, tmp_path):
  out = trainer_process.run(
      "kqreg_trainers.sensitivity", f"--model_dir={float_run}", "--budget=4.0",
      "--calibration_examples=32", "--sensitivity_bits=2,4,8",
      f"--output_dir={tmp_path / 'out'}")
  assert out.returncode == 0, out.stderr[-2000:]
  policy = out.stdout.split("--bits='")[1].split("'")[0]
  assert BitPolicy.parse(policy).default.activation == 8
  assert "conv" in out.stdout
  for name in ("sensitivity.csv", "sensitivity.png"):
    assert (tmp_path / "out" / name).exists(), name


