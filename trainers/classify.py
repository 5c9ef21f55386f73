"""Trains one classifier at one bit policy.

  kqreg-classify --dataset=kqreg_digits --model=cnn --bits=w4 \
      --epochs=30 --model_dir=runs/digits_w4

Writes checkpoints (rerun the same command to resume), history.csv, the noise
logs, TensorBoard logs, model.keras and result.json to --model_dir.
"""

from __future__ import annotations

import json

from absl import app
from absl import logging
from absl import flags

from trainers import flags as kqreg_flags

from kqreg import training  # noqa: E402  (after kqreg_flags set up TF logging)

FLAGS = flags.FLAGS


def _main(argv) -> None:
  logging.set_verbosity(logging.ERROR)  # TF/TFDS info and timing notes; kqreg warns via `warnings`
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  result = kqreg_flags.run_guarded(
      "kqreg-classify",
      lambda: training.run(kqreg_flags.train_config(FLAGS.model_dir)))
  state = "already finished" if result.get("skipped") else "finished"
  print(f"{FLAGS.bits}: {state} in {result['wall_time_s']:.0f}s: "
        f"train acc {result['train_accuracy']:.3f}, val acc "
        f"{result['val_accuracy']:.3f}, gap {result['gap_accuracy']:+.3f}; "
        f"results in {FLAGS.model_dir}/result.json")
  if "tflite" in result:
    t = result["tflite"]
    print(f"model.tflite: {t['size_bytes']:,} bytes "
          f"({t['ratio_to_float']:.2f}x float), top-1 agreement "
          f"{t['top1_agreement']:.3f}, {t['latency_ms_per_example']:.3f} "
          "ms/image")
  print(json.dumps(result, indent=2, sort_keys=True))


def main() -> None:
  kqreg_flags.define_flags("classify")
  flags.mark_flag_as_required("model_dir")
  app.run(_main, flags_parser=kqreg_flags.parser("kqreg-classify"))


if __name__ == "__main__":
  main()
