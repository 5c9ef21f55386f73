"""Bad input, one line, everywhere: every console script refuses it the same way.

Each case runs a trainer as a user would (a process forked from the server
of tests/trainer_process.py) and checks the contract of the trainers' bad
input: exit status 2, exactly one non-empty line on stderr (nothing else:
no traceback, no TensorFlow C++ start-up line), naming the problem, and no
output folder left behind.
"""

import os

import pytest
import trainer_process

# Placeholders in the arguments: {out} the output folder (must not exist
# afterwards), {missing} a folder that does not exist, {empty} an empty one.
OUT = {"trainers.classify": "--model_dir={out}", "trainers.detect": "--model_dir={out}",
       "trainers.sweep": "--output_dir={out}", "trainers.export": "--output={out}/model.tflite",
       "trainers.benchmark": "--output_dir={out}", "trainers.sensitivity": "--output_dir={out}"}
TINY = ["--train_examples=64", "--batch_size=32", "--epochs=1", "--noise_analysis=false",
        "--verbose=0"]

CASES = {
    "trainers.classify": [
        (["--bits=w9"], "flag --bits=w9: Bad weight bits 9"),
        (["--bits=w4,first"], "Bad policy token 'first'"),
        (["--bits=auto:0.01x", *TINY], "below the smallest achievable"),
        (["--model=cnn", "--model_args={'widths': 'x'}", *TINY], "widths"),
        (["--model_args=[1]"], "must be a dict with string keys"),
        (["--model=vgg16"], "flag --model=vgg16"),
        (["--epochs=0"], "flag --epochs=0"),
        (["--label_noise=1.5"], "flag --label_noise=1.5"),
        (["--dataset=nosuch"], "Unknown dataset 'nosuch'"),
        (["--dataset=cifar10", "--data_dir={missing}"], "not prepared in"),
        (["stray"], "unexpected arguments: stray"),
    ],
    "trainers.detect": [
        (["--bits=w4,first"], "Bad policy token 'first'"),
        (["--image_size=70"], "multiple of 32"),
        (["--backbone=huge"], "flag --backbone=huge"),
        (["--max_boxes=0"], "flag --max_boxes=0"),
        (["--dataset=voc/2007", "--data_dir={missing}"], "not prepared in"),
    ],
    "trainers.sweep": [
        (["--sweep_bits=fp,w9"], "--sweep_bits: Bad weight bits 9"),
        (["--sweep_bits=;"], "--sweep_bits: give at least one bit policy"),
        (["--seeds=0,x"], "--seeds: expected integers"),
        (["--task=segment"], "flag --task=segment"),
        (["--task=detect", "--model=resnet20"], "--model applies to --task=classify only"),
        (["--epochs=0"], "flag --epochs=0"),
        (["--sweep_bits=fp", "--seeds=0", "--workers=1", "--dataset=cifar10",
          "--data_dir={missing}"], "not prepared in"),
    ],
    "trainers.export": [
        ([], "--model_dir"),
        (["--model_dir={missing}"], "is not a folder"),
        (["--model_dir={empty}"], "has no params.json"),
        (["--model_dir={empty}", "--verify_examples=-1"], "flag --verify_examples=-1"),
    ],
    "trainers.benchmark": [
        (["--repeats=0"], "flag --repeats=0"),
        (["--rounds=0"], "flag --rounds=0"),
        (["--processes=0"], "flag --processes=0"),
        (["stray"], "unexpected arguments: stray"),
    ],
    "trainers.sensitivity": [
        ([], "--model_dir=None is not a folder"),
        (["--model_dir={missing}"], "is not a folder"),
        (["--model_dir={empty}"], "has no params.json"),
        (["--model_dir={empty}", "--budget=lots"], "--budget"),
        (["--model_dir={empty}", "--sensitivity_bits=9"], "--sensitivity_bits=9"),
        (["--model_dir={empty}", "--base=w9"], "Bad weight bits 9"),
        (["--model_dir={empty}", "--calibration_examples=0"], "flag --calibration_examples=0"),
    ],
}
PARAMS = [pytest.param(module, args, message, id=f"{module.split('.')[1]}:{' '.join(args)}")
          for module, cases in CASES.items() for args, message in cases]


def _fill(arg, paths):
  for name, path in paths.items():
    arg = arg.replace("{" + name + "}", str(path))
  return arg


def test_every_console_script_has_cases():
  assert len(CASES) == 6
  assert all(len(cases) >= 3 for cases in CASES.values())


@pytest.mark.parametrize("module, args, message", PARAMS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(module, args, message, tmp_path):
  paths = {"out": tmp_path / "out", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
  paths["empty"].mkdir()
  argv = [_fill(a, paths) for a in [OUT[module], *args]]
  result = trainer_process.run(module, *argv, timeout=300)
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(lines) == 1, result.stderr[-3000:]
  prog = "kqreg-" + module.split(".")[1]
  assert lines[0].startswith(f"{prog}: error: "), lines[0]
  assert message in lines[0], lines[0]
  assert not os.path.exists(paths["out"]), os.listdir(paths["out"])
  assert not os.path.exists(paths["missing"])
