"""Seed s of every sweep arm shares initial weights, label noise and batch order.

The sweep report pairs the arms by seed (`kqreg.study.sweep.paired`): that
is only valid if seed s of fp, w4, its noise twin n4 and a non-bit arm
(fp + weight decay) start from the same weights, corrupt the same training
labels and see the same batches in the same order. This builds each arm's
run exactly as `kqreg.runs.train` does (global seed, `Task.load`,
`Task.datasets`, `Task.build`) on a tiny `kqreg_digits` config, without
training, and compares.
"""

import hashlib

import numpy as np
import pytest
import tf_keras

from kqreg.classification import task as classify
from kqreg.study.sweep import arms as arms_lib

SEED = 3
ARMS = ("fp", "w4", "n4", "fp+weight_decay=0.01")


def _config(arm, tmp_path, seed=SEED):
  policy, overrides = arms_lib.parse_arm(arm)
  return classify.ClassifyConfig(
      model_dir=str(tmp_path / arms_lib.arm_slug(arm)), dataset="kqreg_digits",
      model="cnn", model_kwargs={"widths": (4, 8, 8), "batch_norm": False},
      train_examples=96, val_examples=32, batch_size=32, epochs=2,
      label_noise=0.4, bits=policy, seed=seed, noise_analysis=False,
      verbose=0, **overrides)


def _float_weights(model):
  """The model's kernels and biases by layer, quantizer state left out."""
  out = {}
  for v in model.weights:
    name = v.name.split("/")[-1].split(":")[0]
    if name in ("kernel", "bias"):
      layer = v.name.split("/")[0].replace("quant_", "")
      out[f"{layer}/{name}"] = v.numpy()
  return out


def _epochs(ds, epochs=2):
  """Per epoch, the batch order: labels and an image digest per batch."""
  out = []
  for _ in range(epochs):
    batches = []
    for x, y in ds:
      batches.append((tuple(int(v) for v in y.numpy()),
                      hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]))
    out.append(batches)
  return out


def _build(arm, tmp_path, seed=SEED):
  config = _config(arm, tmp_path, seed).validate()
  tf_keras.backend.clear_session()
  tf_keras.utils.set_random_seed(config.seed)  # as kqreg.runs.train does
  data = classify.TASK.load(config)
  pipelines = classify.TASK.datasets(config, data)
  model = classify.TASK.build(config, data, steps_per_epoch=3)
  return {"weights": _float_weights(model),
          "label_noise": data.extra["label_noise"],
          "batches": _epochs(pipelines["train"])}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("pairing")
  return {arm: _build(arm, tmp_path) for arm in ARMS}


def test_the_arms_parse(built):
  assert arms_lib.parse_arm("fp+weight_decay=0.01") == (
      "fp", {"weight_decay": 0.01})
  assert set(built) == set(ARMS)


@pytest.mark.parametrize("arm", ARMS[1:])
def test_seed_fixes_initial_weights_across_arms(built, arm):
  ref, other = built["fp"]["weights"], built[arm]["weights"]
  assert ref and set(ref) == set(other), (sorted(ref), sorted(other))
  for name in ref:
    np.testing.assert_array_equal(ref[name], other[name], err_msg=name)


@pytest.mark.parametrize("arm", ARMS[1:])
def test_seed_fixes_label_noise_indices_across_arms(built, arm):
  ref, other = built["fp"]["label_noise"], built[arm]["label_noise"]
  assert ref["count"] > 0
  assert ref["indices_sha256"] == other["indices_sha256"]
  assert ref == other


@pytest.mark.parametrize("arm", ARMS[1:])
def test_seed_fixes_batch_order_across_arms(built, arm):
  ref, other = built["fp"]["batches"], built[arm]["batches"]
  assert ref == other
  assert ref[0] != ref[1]  # reshuffled every epoch, identically per arm


def test_another_seed_changes_all_three(built, tmp_path):
  other = _build("fp", tmp_path, seed=SEED + 1)
  base = built["fp"]
  assert other["label_noise"]["indices_sha256"] != (
      base["label_noise"]["indices_sha256"])
  assert other["batches"] != base["batches"]
  assert any(not np.array_equal(base["weights"][k], other["weights"][k])
             for k in base["weights"])
