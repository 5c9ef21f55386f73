"""Trains one quantization-aware YOLOv8 detector at one bit policy.

  kqreg-detect --dataset=kqreg_shapes --backbone=xs --bits=w4 \
      --image_size=64 --epochs=20 --model_dir=runs/shapes_w4

Writes checkpoints (rerun the same command to resume), history.csv (losses
and per-epoch validation mAP), the noise logs, TensorBoard logs, weights.h5
and result.json (final losses, mAP@0.5 and mAP@[0.5:0.95]) to --model_dir.
"""

from __future__ import annotations

import contextlib
import io
import json

from absl import app
from absl import flags
from absl import logging

from trainers import flags as kqreg_flags  # first: quiets TensorFlow's import

from kqreg import training  # noqa: E402

# keras-cv's import prints "Using TensorFlow backend" on stdout; keep the
# trainer's output its own.
with contextlib.redirect_stdout(io.StringIO()):
  from kqreg.detection import model as model_lib  # noqa: E402
  from kqreg.detection import training as detect_training  # noqa: E402

FLAGS = flags.FLAGS
PROG = "kqreg-detect"


def define_flags() -> None:
  """Defines the detection flags (idempotent).

  Names and meaning match kqreg-classify's where they overlap.
  """
  if "image_size" in FLAGS:
    return
  flags.DEFINE_string(
      "dataset", "kqreg_shapes",
      "TFDS detection dataset: voc/2007, voc/2012 or coco/2017 prepared in "
      "--data_dir, or the offline kqreg_shapes.")
  flags.DEFINE_string("data_dir", None,
                      "TFDS data dir holding prepared real datasets.")
  flags.DEFINE_enum("backbone", "xs", list(model_lib.BACKBONES),
                    "YOLOv8 backbone size.")
  flags.DEFINE_integer("image_size", 64,
                       "Square input size, a multiple of 32.", lower_bound=32)
  flags.DEFINE_string(
      "bits", "fp",
      "Bit policy: fp, w8, w4 (weight-only), w4a8, 'w4,first=w8', ...")
  flags.DEFINE_enum(
      "per_channel", "auto", ["auto", "true", "false"],
      "Weight ranges per output channel: auto = per channel for conv layers.")
  flags.DEFINE_integer("epochs", 10, "Training epochs.", lower_bound=1)
  flags.DEFINE_integer("batch_size", 16, "Global batch size.", lower_bound=1)
  flags.DEFINE_float("learning_rate", 1e-3,
                     "Adam learning rate (gradient norm clipped at 10).",
                     lower_bound=0.0)
  flags.DEFINE_enum("lr_schedule", "constant",
                    list(detect_training.LR_SCHEDULES),
                    "Learning-rate schedule over the whole run.")
  flags.DEFINE_bool("augment", True, "Random flip + translation.")
  flags.DEFINE_integer("max_boxes", 32, "Boxes kept per image.",
                       lower_bound=1)
  flags.DEFINE_integer("train_examples", None,
                       "Train on the first n examples only.", lower_bound=1)
  flags.DEFINE_integer("val_examples", None,
                       "Evaluate on the first n validation examples only.",
                       lower_bound=1)
  flags.DEFINE_integer("map_examples", 64,
                       "Validation images for the per-epoch mAP (0: off).",
                       lower_bound=0)
  flags.DEFINE_integer("seed", 0, "Seed for weights, shuffling, augmentation.")
  flags.DEFINE_string("model_dir", None,
                      "Output folder; rerunning the same command resumes.")
  flags.DEFINE_bool("noise_analysis", True,
                    "Record per-layer weight noise every epoch.")
  flags.DEFINE_integer("noise_every", 1, "Epochs between noise records.",
                       lower_bound=1)
  flags.DEFINE_bool("export_tflite", False,
                    "Write model.tflite after training (not available yet).")
  flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES),
                    "tf.distribute strategy.")
  flags.DEFINE_integer("verbose", 2,
                       "Keras fit verbosity: 0 silent, 1 bar, 2 line/epoch.")
  flags.register_validator("bits", kqreg_flags._valid_policy,  # pylint: disable=protected-access
                           message="--bits is not a valid bit policy.")
  flags.register_validator(
      "image_size", lambda v: v % model_lib.SIZE_MULTIPLE == 0,
      message=f"--image_size must be a multiple of {model_lib.SIZE_MULTIPLE}, "
      "e.g. 64 or 96.")


def detect_config() -> detect_training.DetectConfig:
  """A `DetectConfig` from the parsed flags."""
  return detect_training.DetectConfig(
      model_dir=FLAGS.model_dir, dataset=FLAGS.dataset,
      data_dir=FLAGS.data_dir, backbone=FLAGS.backbone, bits=FLAGS.bits,
      per_channel={"auto": None, "true": True, "false": False}[
          FLAGS.per_channel], image_size=FLAGS.image_size,
      max_boxes=FLAGS.max_boxes, epochs=FLAGS.epochs,
      batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
      lr_schedule=FLAGS.lr_schedule, augment=FLAGS.augment,
      train_examples=FLAGS.train_examples, val_examples=FLAGS.val_examples,
      map_examples=FLAGS.map_examples, seed=FLAGS.seed,
      noise_analysis=FLAGS.noise_analysis, noise_every=FLAGS.noise_every,
      strategy=FLAGS.strategy, verbose=FLAGS.verbose)


def _run():
  from kqreg.detection.model import DetectorError  # pylint: disable=g-import-not-at-top
  try:
    return detect_training.run(detect_config())
  except DetectorError as e:
    raise training.ConfigError(str(e)) from e


def _main(argv) -> None:
  logging.set_verbosity(logging.WARNING)  # TFDS logs every file it reads
  if len(argv) > 1:
    kqreg_flags.fail(PROG, app.UsageError(
        f"unexpected arguments: {' '.join(argv[1:])}"))
  if FLAGS.export_tflite:
    kqreg_flags.fail(PROG, training.ConfigError(
        "--export_tflite: TFLite export is not implemented for detectors; "
        "drop the flag."))
  result = kqreg_flags.run_guarded(PROG, _run)
  state = "already finished" if result.get("skipped") else "finished"
  print(f"{FLAGS.bits}: {state} in {result['wall_time_s']:.0f}s: val loss "
        f"{result['val_loss']:.3f}, mAP@0.5 {result['val_map50']:.3f}, "
        f"mAP@[.5:.95] {result['val_map']:.3f}; results in "
        f"{FLAGS.model_dir}/result.json")
  print(json.dumps(result, indent=2, sort_keys=True))


def main() -> None:
  define_flags()
  flags.mark_flag_as_required("model_dir")
  app.run(_main, flags_parser=kqreg_flags.parser(PROG))


if __name__ == "__main__":
  main()
