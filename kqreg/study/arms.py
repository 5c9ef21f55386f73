"""The arms of a sweep: policy strings, their bits and their pairings.

An arm is one `--sweep_bits` policy ("fp", "w8", "w4a8,first=w8", ...). A
noise twin ("n4", "n4a8,first=w8") replaces rounding to the b-bit grid by
uniform noise U(−Δ/2, Δ/2) of that grid's step; its quantized arm is the
same policy with the leading `n` read as `w` ("n4" ↔ "w4").
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

__all__ = ["REFERENCE", "weight_bits", "is_noise_twin", "quantized_partner",
           "comparison_pairs"]

REFERENCE = "fp"
_HEAD = re.compile(r"^([wn])(\d+)")


def weight_bits(arm: str) -> Optional[int]:
  """Weight bits of the arm's default token ("w4a8,..." -> 4); None for fp."""
  match = _HEAD.match(arm.split(",")[0].strip())
  return int(match.group(2)) if match else None


def is_noise_twin(arm: str) -> bool:
  """Whether the arm's default token is a noise token (`n4`, `n4a8`)."""
  return arm.strip().startswith("n") and weight_bits(arm) is not None


def quantized_partner(arm: str, arms: Sequence[str]) -> Optional[str]:
  """The quantized arm of a noise twin, if the sweep has it ("n4" -> "w4")."""
  if not is_noise_twin(arm):
    return None
  partner = "w" + arm.strip()[1:]
  return partner if partner in arms else None


def comparison_pairs(arms: Sequence[str],
                     reference: str = REFERENCE) -> List[Tuple[str, str]]:
  """(arm, reference) pairs a sweep tests, in the order of `arms`.

  Every arm against `reference` (when the sweep has it), then every noise
  twin against its quantized arm: does noise alone do what rounding does?
  """
  pairs = []
  if reference in arms:
    pairs += [(arm, reference) for arm in arms if arm != reference]
  for arm in arms:
    partner = quantized_partner(arm, arms)
    if partner is not None:
      pairs.append((arm, partner))
  return pairs
