"""Trains one quantization-aware YOLOv8 detector at one bit policy.

  kqreg-detect --dataset=kqreg_shapes --backbone=xs --bits=w4 \
      --image_size=64 --epochs=20 --model_dir=runs/shapes_w4

Writes checkpoints (rerun the same command to resume), history.csv (losses
and per-epoch validation mAP), the noise logs, TensorBoard logs, model.keras
and result.json (final losses, mAP@0.5 and mAP@[0.5:0.95]) to --model_dir;
with --export_tflite also model.tflite, checked in LiteRT.
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
from absl import logging

from trainers import flags as kqreg_flags  # first: quiets TensorFlow's import

FLAGS = flags.FLAGS
PROG = "kqreg-detect"


def _run():
  from kqreg.detection import training as detect_training  # pylint: disable=g-import-not-at-top
  return detect_training.run(kqreg_flags.detect_config(FLAGS.model_dir))


def _main(argv) -> None:
  logging.set_verbosity(logging.WARNING)  # TFDS logs every file it reads
  if len(argv) > 1:
    kqreg_flags.fail(PROG, app.UsageError(
        f"unexpected arguments: {' '.join(argv[1:])}"))
  result = kqreg_flags.run_guarded(PROG, _run)
  state = "already finished" if result.get("skipped") else "finished"
  print(f"{FLAGS.bits}: {state} in {result['wall_time_s']:.0f}s: val loss "
        f"{result['val_loss']:.3f}, mAP@0.5 {result['val_map50']:.3f}, "
        f"mAP@[.5:.95] {result['val_map']:.3f}; results in "
        f"{FLAGS.model_dir}/result.json")
  if "tflite" in result:
    t = result["tflite"]
    print(f"model.tflite: {t['size_bytes']:,} bytes "
          f"({t['ratio_to_float']:.2f}x float); on {t['examples']} "
          f"validation images mAP@0.5 {t['tflite_map50']:.3f} in LiteRT vs "
          f"{t['keras_map50']:.3f} in Keras, "
          f"{t['latency_ms_per_example']:.2f} ms/image")
  print(json.dumps(result, indent=2, sort_keys=True))


def main() -> None:
  kqreg_flags.define_flags("detect")
  kqreg_flags.use_task_defaults("detect")
  flags.mark_flag_as_required("model_dir")
  app.run(_main, flags_parser=kqreg_flags.parser(PROG))


if __name__ == "__main__":
  main()
