"""Resolving `--bits=auto:<budget>` in a run: measure, allocate, record.

A run resolves its auto policy once, before building its quantized model:
sensitivity of the float model on one training batch, then `allocate`. The
allocation is recorded in the model dir (`allocation.json`, with
`sensitivity.csv` and its heat map), so a resumed run reads the recorded
policy back rather than measuring again. Parsing the flag is
`kqreg.mixed_precision.auto_policy`'s job alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg.io_utils import atomic_write_json
from kqreg.mixed_precision import allocator
from kqreg.mixed_precision import layer_sensitivity
from kqreg.mixed_precision import sensitivity_report
from kqreg.mixed_precision.auto_policy import ALLOCATION_FILE, AutoPolicy
from kqreg.mixed_precision.budget import BudgetError
from kqreg.qat import policy as policy_lib

__all__ = ["AutoAllocation", "loss_of", "resolve"]


@dataclasses.dataclass
class AutoAllocation:
  """A resolved auto policy: the policy, its record and the rows behind it.

  `rows` is empty when the allocation was read back from a model dir.
  """
  policy: policy_lib.BitPolicy
  record: Dict[str, Any]
  rows: List[Dict[str, Any]]

  def write(self, model_dir: str) -> None:
    """allocation.json, sensitivity.csv and sensitivity.png (when measured)."""
    if not self.rows:
      return
    sensitivity_report.write_sensitivity(self.rows, model_dir)
    atomic_write_json(os.path.join(model_dir, ALLOCATION_FILE), self.record)


def resolve(auto: AutoPolicy, *, model_dir: str,
            build_float: Callable[[], tf_keras.Model], calibration: Any
            ) -> AutoAllocation:
  """The policy `auto` stands for in the run of `model_dir`.

  Args:
    auto: the budget and base.
    model_dir: the run's folder; its `allocation.json` (from an interrupted
      run of the same flags) is reused as it is.
    build_float: returns the float model to measure (compiled, so its loss is
      known), built only when no allocation is recorded.
    calibration: one batch `(x, y)` of training data.

  Returns:
    The allocation; the caller writes it (`AutoAllocation.write`) once the run's
    params.json exists, so a refused run leaves nothing behind.
  """
  path = os.path.join(model_dir, ALLOCATION_FILE)
  if os.path.exists(path):
    record = _read(path, auto)
    return AutoAllocation(policy_lib.BitPolicy.parse(record["policy"]), record, [])
  model = build_float()
  rows = layer_sensitivity.sensitivity(
      model, calibration, bits=auto.choices, loss=loss_of(model),
      base=auto.base)
  try:
    chosen = allocator.allocation(model, calibration, auto.budget,
                                  choices=auto.choices, base=auto.base,
                                  rows=rows)
  except BudgetError as e:  # the budget meets this model only here
    raise policy_lib.PolicyError(f"--bits={auto}: {e}") from e
  record = {**chosen.summary(), "auto": str(auto)}
  return AutoAllocation(chosen.policy, record, rows)


def loss_of(model: tf_keras.Model):
  """A compiled model's loss as a callable (None when not compiled)."""
  loss = getattr(model, "loss", None)
  return tf_keras.losses.get(loss) if isinstance(loss, str) else loss


def _read(path: str, auto: AutoPolicy) -> Dict[str, Any]:
  try:
    with open(path) as f:
      record = json.load(f)
    policy_lib.BitPolicy.parse(record["policy"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise policy_lib.PolicyError(
        f"{path} is unreadable ({e}); delete it to measure and allocate "
        "again.") from e
  if record.get("auto") != str(auto):
    raise policy_lib.PolicyError(
        f"{path} was allocated for --bits={record.get('auto')}, not "
        f"{auto}; use a new --model_dir.")
  return record
