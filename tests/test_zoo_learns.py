"""Every zoo model learns kqreg_mnist in a short run, and evaluates as it trains.

A short run (a few hundred steps) must leave BatchNormalization's moving
statistics close to the batch statistics the model trained on: otherwise
evaluation (inference mode) collapses to chance while the in-batch training
accuracy is high. Each preset is trained here at fp and w4a8 (the two
slowest at w4a8 only) with a small width where the preset allows, and its
validation accuracy, taken in inference mode, must be far above chance
(0.1) and close to what the same weights score on training images in
training mode.
"""

import time

import numpy as np
import pytest
import tf_keras

import kqreg
from kqreg import data as data_lib
from kqreg.classification import models

VAL_EXAMPLES = 500
MIN_VAL_ACCURACY = 0.5
# Per preset: training steps (<= 300), batch size, Adam learning rate, and
# the smallest size its preset allows. MobileNetV2 learns slowly from scratch,
# in training mode as much as in inference mode. At batch 32 and 3e-3, w4a8
# reached 0.61, 0.20 and 0.68 validation accuracy after 300 steps (model
# seeds 0, 1, 2; lr 1e-3 and 1e-2 did worse: 0.57, 0.10); at batch 64, 0.86,
# 0.77 and 0.85 (fp 0.87, seed 1). With activation ranges decaying by 0.9,
# batch 32 still diverged on seed 1 (0.16; seed 0 0.80): batch 64 stays.
# docs/guides/training.md says so.
ZOO = {
    "mlp": (150, 32, 1e-3, {"hidden": (64,)}),
    "cnn": (150, 32, 1e-3, {"widths": (16, 32, 64)}),
    "resnet20": (150, 32, 1e-3, {"depth": 8}),
    "mobilenetv2": (300, 64, 3e-3, {}),
    # Image rows as a sequence (sequential MNIST) and a small ViT. Measured
    # here (2026-12-06), val accuracy fp / w4a8: cnn1d 0.83 / 0.82, lstm
    # 0.77 / 0.79, gru 0.77 / 0.79 after 150 steps at 3e-3; vit 0.72 / 0.75
    # after 300 steps at 1e-3 (at 3e-3: 0.28 / 0.44 after 150); vit w4a8
    # with its LayerNorms in int8 (2026-12-08): 0.77, 0.78 with their hook
    # ranges starting at the first batch.
    "cnn1d": (150, 32, 3e-3, {}),
    "lstm": (150, 32, 3e-3, {}),
    "gru": (150, 32, 3e-3, {}),
    "vit": (300, 32, 1e-3, {}),
}
# ResNet-50 (23.6M parameters) takes 7 minutes for 150 steps on 2 cores, so
# this suite checks only that its preset gets the same short-run BN momentum
# that makes the others learn (test_resnet50_uses_the_short_run_bn_momentum)
# and that activation ranges follow a growing activation within tens of steps
# (tests/test_quantizers.py). Measured with this file's procedure (batch 32,
# Adam 1e-3, seed 0, 150 steps, 2026-12-06): fp 0.916 val accuracy; w4a8
# 0.326 and w8a8 0.300 while activation ranges decayed by tfmot's 0.999, w4
# (float activations) 0.840; at kqreg's decay of 0.9 (ACTIVATION_RANGE_DECAY)
# w8a8 0.902 and w4a8 0.830.
TRAINED_ELSEWHERE = {"resnet50"}


def test_every_preset_is_covered():
  assert set(ZOO) | TRAINED_ELSEWHERE == set(models.MODELS)
  assert all(steps <= 300 for steps, _, _, _ in ZOO.values())


def test_resnet50_uses_the_short_run_bn_momentum():
  model = models.build("resnet50", (32, 32, 3), 10, seed=0)
  cnn = models.build("cnn", (32, 32, 3), 10, seed=0)
  momenta = {layer.momentum for layer in model.layers
             if isinstance(layer, tf_keras.layers.BatchNormalization)}
  cnn_momenta = {layer.momentum for layer in cnn.layers
                 if isinstance(layer, tf_keras.layers.BatchNormalization)}
  assert len(momenta) == 1 and momenta == cnn_momenta, (momenta, cnn_momenta)


# Session scope: tests/conftest.py keeps a file whose module fixtures train
# on one worker; these eight runs are independent and spread over workers.
@pytest.fixture(scope="session")
def mnist():
  train, val, _, info, _ = data_lib.load_splits("kqreg_mnist", None)
  val_ds = data_lib.pipeline(val, batch_size=250, training=False,
                             take=VAL_EXAMPLES)
  return train, val_ds, info


# MobileNetV2 and the ViT are the two slow presets (57 s and 26 s a run at
# fp on 2 cores): they are trained at w4a8 only, where quantized weights and
# moving activation ranges make short runs hardest; the same BN momentum and
# batch statistics serve their fp runs. Measured with this file's procedure
# at fp: MobileNetV2 0.89, ViT 0.72 (2026-12-06).
W4A8_ONLY = {"mobilenetv2", "vit"}
CASES = [(name, bits) for name in ZOO for bits in ("fp", "w4a8")
         if bits == "w4a8" or name not in W4A8_ONLY]


@pytest.mark.parametrize("name,bits", CASES)
def test_short_run_learns_and_evaluates_as_it_trains(mnist, name, bits):
  train, val_ds, info = mnist
  steps, batch_size, lr, model_args = ZOO[name]
  train_ds = data_lib.pipeline(train, batch_size=batch_size, training=True,
                               seed=0).repeat()
  start = time.time()
  model = kqreg.quantize(
      models.build(name, info.image_shape, info.num_classes, seed=0,
                   **model_args), bits)
  model.compile(
      tf_keras.optimizers.Adam(lr),
      tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  model.fit(train_ds, steps_per_epoch=steps, epochs=1, verbose=0)
  val_accuracy = model.evaluate(val_ds, verbose=0, return_dict=True)[
      "accuracy"]
  # The same training images in inference mode and in training mode (the
  # latter updates BN statistics and ranges: measured after evaluation).
  x, y = next(iter(train_ds.unbatch().batch(256)))
  inference = np.mean(np.argmax(model(x, training=False), -1) == y.numpy())
  training = np.mean(np.argmax(model(x, training=True), -1) == y.numpy())
  print(f"{name} {bits}: {steps} steps, val acc {val_accuracy:.3f}, train "
        f"images {inference:.3f} (inference) / {training:.3f} (training "
        f"mode), {time.time() - start:.1f} s")
  assert val_accuracy >= MIN_VAL_ACCURACY
  assert inference >= training - 0.2
