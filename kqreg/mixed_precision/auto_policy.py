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
from typing import Optional, Tuple, Union

from kqreg.mixed_precision import budget as budget_lib
from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.mixed_precision import allocator
from kqreg.mixed_precision import layer_sensitivity as layer_sensitivity
from kqreg.qat import policy as policy_lib

__all__ = ["ALLOCATION_FILE", "AUTO_PREFIX", "AutoPolicy", "parse"]

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

  Example:
  >>> import kqreg
  >>> auto = kqreg.mixed_precision.auto_policy.parse("auto:0.15x")
  >>> type(auto).__name__, auto.budget
  ('AutoPolicy', '0.15x')
  """
  budget: str
  base: policy_lib.BitPolicy = dataclasses.field(
      default_factory=lambda: policy_lib.BitPolicy.parse(DEFAULT_BASE))
  choices: Tuple[int, ...] = allocator.DEFAULT_CHOICES

  @classmethod
  def parse(cls, text: str) -> "AutoPolicy":
    if not text.startswith(AUTO_PREFIX):
      raise policy_lib.PolicyError(
          f"{text!r} is not an auto policy; write auto:<budget>[:<base>], "
          "e.g. auto:4.0 or auto:0.15x:w8a8,first=w8a8")
    budget, _, base = text[len(AUTO_PREFIX):].partition(":")
    try:
      budget_lib.parse_budget(budget)
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


