"""`--bits=auto:<budget>`: a run's bit policy chosen from measured noise.

Grammar (the flag's value):

    auto     := "auto:" budget [":" base]
    budget   := mean weight bits ("4.0") | fraction of float32 ("0.15x")
              | weight bytes ("120KiB", "64KB", "2000B")
    base     := a policy (`kqreg.policy`) whose default token gives the
                activation bits, and whose first / last / name overrides and
                skip patterns are kept as they are; default "w8a8"

Examples: `auto:4.0`, `auto:0.15x`, `auto:3.5:w8a8,first=w8a8,last=w8a8`.

A run resolves it once, before building its quantized model: sensitivity of
the float model (with `init_from`'s trained weights when given) on one
training batch, then `kqreg.allocate` under the budget. The chosen policy,
the budget it meets and the sensitivity table go to the model dir
(`allocation.json`, `sensitivity.csv`, `sensitivity.png`); a resumed run
reads the policy back instead of measuring again, so it trains what it
started with.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg import bit_allocation
from kqreg import layer_sensitivity
from kqreg import policy as policy_lib
from kqreg import sensitivity_report
from kqreg.io_utils import atomic_write_json

__all__ = ["AutoPolicy", "Allocation", "AUTO_PREFIX", "loss_of", "ALLOCATION_FILE", "parse", "resolve"]

AUTO_PREFIX = "auto:"
ALLOCATION_FILE = "allocation.json"
# 8-bit activations: a weight-only model's kernels are stored as INT8 at
# every bit-width (the converter re-quantizes them), so only with quantized
# activations do 2–4-bit kernels shrink the file and byte budgets bite.
DEFAULT_BASE = "w8a8"


@dataclasses.dataclass(frozen=True)
class AutoPolicy:
  """A budget and a base policy, to be resolved into a `BitPolicy` per run.

  Attributes:
    budget: the budget as written ("4.0", "0.15x", "120KiB").
    base: pins, skips and activation bits every chosen policy keeps.
    choices: weight bit-widths a layer may get.
  """
  budget: str
  base: policy_lib.BitPolicy = dataclasses.field(
      default_factory=lambda: policy_lib.BitPolicy.parse(DEFAULT_BASE))
  choices: Tuple[int, ...] = bit_allocation.DEFAULT_CHOICES

  @classmethod
  def parse(cls, text: str) -> "AutoPolicy":
    if not text.startswith(AUTO_PREFIX):
      raise policy_lib.PolicyError(
          f"{text!r} is not an auto policy; write auto:<budget>[:<base>], "
          "e.g. auto:4.0 or auto:0.15x:w8a8,first=w8a8")
    budget, _, base = text[len(AUTO_PREFIX):].partition(":")
    try:
      bit_allocation.parse_budget(budget)
    except ValueError as e:
      raise policy_lib.PolicyError(f"in {text!r}: {e}") from e
    base_policy = policy_lib.BitPolicy.parse(base or DEFAULT_BASE)
    if base_policy.default.noise:
      raise policy_lib.PolicyError(
          f"in {text!r}: the base's default {base_policy.default} is a noise "
          "twin; auto chooses quantized weight bits, so give a w<b> base.")
    return cls(budget=budget.strip(), base=base_policy)

  @property
  def activation_bits(self) -> Optional[int]:
    return self.base.default.activation

  def candidates(self) -> Tuple[policy_lib.BitPolicy, ...]:
    """The base and one uniform policy per choice: what export must accept."""
    return (self.base,) + tuple(
        dataclasses.replace(self.base, default=policy_lib.Bits(
            weight=b, activation=self.activation_bits))
        for b in self.choices)

  def __str__(self) -> str:
    base = str(self.base)
    return AUTO_PREFIX + self.budget + ("" if base == DEFAULT_BASE
                                         else ":" + base)


def parse(value: Union[str, policy_lib.BitPolicy, AutoPolicy]
          ) -> Union[policy_lib.BitPolicy, AutoPolicy]:
  """A `--bits` value: a `BitPolicy`, or an `AutoPolicy` for auto:<budget>."""
  if isinstance(value, (policy_lib.BitPolicy, AutoPolicy)):
    return value
  if isinstance(value, str) and value.strip().startswith(AUTO_PREFIX):
    return AutoPolicy.parse(value.strip())
  return policy_lib.BitPolicy.parse(value)


@dataclasses.dataclass
class Allocation:
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
            ) -> Allocation:
  """The policy `auto` stands for in the run of `model_dir`.

  Args:
    auto: the budget and base.
    model_dir: the run's folder; its `allocation.json` (from an interrupted
      run of the same flags) is reused as it is.
    build_float: returns the float model to measure (compiled, so its loss is
      known), built only when no allocation is recorded.
    calibration: one batch `(x, y)` of training data.

  Returns:
    The allocation; the caller writes it (`Allocation.write`) once the run's
    params.json exists, so a refused run leaves nothing behind.
  """
  path = os.path.join(model_dir, ALLOCATION_FILE)
  if os.path.exists(path):
    record = _read(path, auto)
    return Allocation(policy_lib.BitPolicy.parse(record["policy"]), record, [])
  model = build_float()
  rows = layer_sensitivity.sensitivity(
      model, calibration, bits=auto.choices, loss=loss_of(model),
      base=auto.base)
  chosen = bit_allocation.allocation(model, calibration, auto.budget,
                                     choices=auto.choices, base=auto.base,
                                     rows=rows)
  record = {**chosen.summary(), "auto": str(auto)}
  return Allocation(chosen.policy, record, rows)


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

