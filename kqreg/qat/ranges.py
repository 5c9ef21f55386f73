"""Activation ranges: freeze them in place, or from an epoch on (a callback).

A frozen `ActivationQuantizer` stops moving its moving-average range and
skips the range reductions in training, so later epochs train on a fixed
grid: the grid the exported file will use.
"""

from __future__ import annotations

import warnings
from typing import List, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg import _tfmot
from kqreg.qat import quantizers

__all__ = ["FreezeActivationRanges", "freeze_activation_ranges",
           "moving_average_quantizers"]


def freeze_activation_ranges(model: tf_keras.Model, frozen: bool = True
                             ) -> int:
  """Stops (or, with `frozen=False`, restarts) the activation-range updates.

  A frozen `ActivationQuantizer` trains on the range its moving average has
  reached and skips the batch min/max and the update: two passes over each
  activation per step (PyTorch's QAT recipe freezes its observers the same
  way). Inference is unchanged. The switch is read when a training step is
  traced: for a model already trained or compiled, remake its train function
  (`model.make_train_function(force=True)`), as `FreezeActivationRanges`
  does.

  Returns:
    How many activation quantizers changed state.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> qat = kqreg.quantize(model, "w4a8")
  >>> kqreg.qat.freeze_activation_ranges(qat)
  2
  """
  changed = 0
  for quantizer in moving_average_quantizers(model):
    if quantizer.frozen != frozen:
      quantizer.frozen = frozen
      changed += 1
  return changed


def moving_average_quantizers(model: tf_keras.Model
                              ) -> List[quantizers.ActivationQuantizer]:
  """The `ActivationQuantizer`s of `model`: those with a range to freeze.

  Example:
  >>> import kqreg, tf_keras
  >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
  >>> quantizers = kqreg.qat.moving_average_quantizers(kqreg.quantize(model, "w4a8"))
  >>> [type(q).__name__ for q in quantizers]
  ['ActivationQuantizer', 'ActivationQuantizer']
  """
  return [q for q in _tfmot.iter_activation_quantizers(model)
          if isinstance(q, quantizers.ActivationQuantizer)]


class FreezeActivationRanges(tf_keras.callbacks.Callback):
  """Freezes the activation ranges once `after_epochs` epochs have trained.

  From epoch index `after_epochs` on, activation quantizers train on the
  ranges their moving averages reached and skip the per-step range update
  (`kqreg.qat.freeze_activation_ranges`); the training step is retraced once, at
  the switch. A `fit` that starts (or resumes) at or past that epoch freezes
  before its first step, so a resumed run trains as an uninterrupted one. A
  `fit` that starts before it unfreezes first.

  Args:
    after_epochs: epochs of range updates before the freeze, >= 1.

  Example:
  >>> import kqreg
  >>> callback = kqreg.qat.FreezeActivationRanges(after_epochs=2)
  >>> callback.after_epochs
  2
  """

  def __init__(self, after_epochs: int):
    super().__init__()
    if (not isinstance(after_epochs, int) or isinstance(after_epochs, bool)
        or after_epochs < 1):
      raise ValueError("`after_epochs` must be a positive integer. "
                       f"Received: after_epochs={after_epochs!r}")
    self.after_epochs = after_epochs
    self._frozen: Optional[bool] = None  # unknown until the first epoch

  def on_train_begin(self, logs=None):
    self._frozen = None
    if not moving_average_quantizers(self.model):
      warnings.warn(
          f"FreezeActivationRanges: model {self.model.name!r} has no "
          "moving-average activation quantizer (a weight-only or float "
          "policy?); there is nothing to freeze.", stacklevel=2)

  def on_epoch_begin(self, epoch, logs=None):
    frozen = epoch >= self.after_epochs
    if frozen != self._frozen:
      if freeze_activation_ranges(self.model, frozen):
        self.model.make_train_function(force=True)
      self._frozen = frozen
