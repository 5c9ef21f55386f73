"""Weight-size budgets: mean bits, a fraction of float32, or bytes.

One parser (`parse_budget`) for `kqreg.allocate`, `--bits=auto:<budget>`
and `kqreg-sensitivity --budget`, so the three accept the same spellings.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Union

__all__ = ["BUDGET_SPELLINGS", "FLOAT32_BYTES", "Budget", "BudgetError",
           "parse_budget"]


class BudgetError(ValueError):
  """A budget no assignment of bits can meet; the message names the least.

  Example:
  >>> issubclass(BudgetError, ValueError)
  True
  """

BUDGET_SPELLINGS = (
    "a number = mean weight bits over the quantized kernels (e.g. 4 or 3.5), "
    "'<r>x' = fraction of the float32 kernel bytes (e.g. 0.15x), or a size "
    "in B, kB/KB (1000), KiB (1024), MB or MiB (e.g. 120KiB, 64KB, 2000B)")

_BYTE_UNITS = {"B": 1, "kB": 1000, "KB": 1000, "KiB": 1024,
               "MB": 1000**2, "MiB": 1024**2}
_BUDGET_RE = re.compile(
    r"^(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
    r"(?P<unit>x|B|kB|KB|KiB|MB|MiB)?$")
FLOAT32_BYTES = 4
# Capacity rounding: a budget exactly at a total must admit it.
_EPS = 1e-9



@dataclasses.dataclass(frozen=True)
class Budget:
  """A weight-size budget in one of three units.

  Attributes:
    kind: "bits" (mean weight bits, parameter-weighted), "ratio" (fraction
      of the float32 kernel bytes) or "bytes" (stored kernel bytes).
    value: the number, in `unit`.
    unit: "bits", "x", or a byte unit (B, kB, KB, KiB, MB, MiB).

  Example:
  >>> import kqreg
  >>> budget = kqreg.mixed_precision.parse_budget("120KiB")
  >>> budget.kind, budget.value, budget.unit
  ('bytes', 120.0, 'KiB')
  """
  kind: str
  value: float
  unit: str

  def __str__(self) -> str:
    return self.format(self.value)

  @property
  def _scale(self) -> int:
    return _BYTE_UNITS.get(self.unit, 1)

  def capacity(self, params: int) -> int:
    """The budget in solver units for `params` counted kernel elements:
    bits · params for "bits", bytes otherwise."""
    if self.kind == "bits":
      total = self.value * params
    elif self.kind == "ratio":
      total = self.value * FLOAT32_BYTES * params
    else:
      total = self.value * self._scale
    return int(math.floor(total * (1 + _EPS) + _EPS))

  def express(self, amount: float, params: int) -> float:
    """Solver units (see `capacity`) in this budget's unit."""
    if self.kind == "bits":
      return amount / params
    if self.kind == "ratio":
      return amount / (FLOAT32_BYTES * params)
    return amount / self._scale

  def format(self, value: float, round_up: bool = False) -> str:
    """`value` in this unit, e.g. "3.5", "0.15x", "120KiB"; `round_up`
    rounds up at the shown precision (so the text admits `value`)."""
    if self.unit == "B":
      return f"{math.ceil(value - _EPS) if round_up else round(value)}B"
    decimals = 4 if self.kind in ("bits", "ratio") else 3
    if round_up:
      value = math.ceil(value * 10**decimals - 1e-6) / 10**decimals
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return text + {"bits": "", "ratio": "x"}.get(self.kind, self.unit)


def parse_budget(text: Union[str, float, int, Budget]) -> Budget:
  """Parses a budget: `4`, `"3.5"`, `"0.15x"`, `"120KiB"`, `"64KB"`, `"2000B"`.

  Args:
    text: a positive number (mean weight bits) or a string, see
      `BUDGET_SPELLINGS`; a `Budget` passes through.

  Raises:
    ValueError: anything else, with the accepted spellings.

  Example:
  >>> import kqreg
  >>> [kqreg.mixed_precision.parse_budget(b).kind for b in (4, "0.15x", "64KB")]
  ['bits', 'ratio', 'bytes']
  """
  if isinstance(text, Budget):
    return text
  value, unit = None, "bits"
  if isinstance(text, numbers.Real) and not isinstance(text, bool):
    value = float(text)
  elif isinstance(text, str):
    match = _BUDGET_RE.match(text.strip())
    if match:
      value = float(match["num"])
      unit = match["unit"] or "bits"
  if value is None or not math.isfinite(value) or value <= 0:
    raise ValueError(
        f"Bad budget {text!r}: write {BUDGET_SPELLINGS}; it must be "
        "positive.")
  kind = {"bits": "bits", "x": "ratio"}.get(unit, "bytes")
  return Budget(kind, value, unit)
