"""Image classification: the task, its model zoo and its datasets.

  task     `ClassifyConfig`, `run`: the classification hooks of `kqreg.runs`
  models   the zoo: mlp, cnn, resnet20, mobilenetv2, resnet50
Import `kqreg.classification.task` for the task: this package imports nothing
itself, so the model zoo does not pay for the run library.
"""
