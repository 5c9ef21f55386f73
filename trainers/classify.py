"""Trains one classifier at one bit policy.

  kqreg-classify --dataset=kqreg_mnist --model=cnn --bits=w4 \
      --epochs=30 --model_dir=runs/mnist_w4

Writes checkpoints (rerun the same command to resume), history.csv, the noise
logs, TensorBoard logs, model.keras and result.json to --model_dir.
"""

from . import app


def main() -> None:
  app.train("classify", "kqreg-classify")


if __name__ == "__main__":
  main()
