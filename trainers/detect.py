"""Trains one quantization-aware YOLOv8 detector at one bit policy.

  kqreg-detect --dataset=kqreg_shapes --backbone=xs --bits=w4 \
      --image_size=64 --epochs=20 --model_dir=runs/shapes_w4

Writes checkpoints (rerun the same command to resume), history.csv (losses
and per-epoch validation mAP), the noise logs, TensorBoard logs, model.keras
and result.json (final losses, mAP@0.5 and mAP@[0.5:0.95]) to --model_dir;
with --export_tflite also model.tflite, checked in LiteRT.
"""

from . import app


def main() -> None:
  app.train("detect", "kqreg-detect")


if __name__ == "__main__":
  main()
