"""The arms of a sweep: policy strings, their bits and their pairings.

An arm is one `--sweep_bits` policy ("fp", "w8", "w4a8,first=w8", ...). A
noise twin ("n4", "n4a8,first=w8") replaces rounding to the b-bit grid by
uniform noise U(−Δ/2, Δ/2) of that grid's step; its quantized arm is the
same policy with the leading `n` read as `w` ("n4" ↔ "w4").

An arm may also change settings other than bits, `<policy>[+key=value...]`
("fp+weight_decay=0.5": a positive control, an established regularizer on
the same seeds); `parse_arm` splits it into the policy and config overrides.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["REFERENCE", "weight_bits", "is_noise_twin", "quantized_partner",
           "comparison_pairs", "ArmError", "parse_arm", "arm_policy",
           "arm_overrides", "arm_slug"]

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


# --------------------------------------------------------------------------
# Arms with settings other than bits: "<policy>[+key=value...]"
# --------------------------------------------------------------------------

# Config fields an arm may not set: the sweep sets them per run.
RESERVED_SETTINGS = ("bits", "seed", "model_dir")


class ArmError(ValueError):
  """A malformed arm string (`parse_arm`)."""


def _setting_value(text: str):
  import ast  # pylint: disable=g-import-not-at-top
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare word: a string setting (optimizer=sgd)


def parse_arm(arm: str) -> Tuple[str, Dict[str, Any]]:
  """"fp+weight_decay=1e-3" -> ("fp", {"weight_decay": 0.001}).

  An arm is a bit policy followed by config overrides, each `+key=value`;
  values are Python literals (numbers, True/False, tuples, dicts) or bare
  words (strings). The keys are config fields (checked by the caller
  against the task's config); `bits`, `seed` and `model_dir` are the
  sweep's own and are refused.

  Raises:
    ArmError: an empty policy, an entry without `=`, a reserved or repeated
      key.
  """
  policy, *settings = arm.strip().split("+")
  policy = policy.strip()
  if not policy:
    raise ArmError(f"arm {arm!r}: give a bit policy before '+'.")
  overrides: Dict[str, Any] = {}
  for entry in settings:
    key, sep, value = entry.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
      raise ArmError(f"arm {arm!r}: write each setting as +key=value "
                     f"(got {entry!r}).")
    if key in RESERVED_SETTINGS:
      raise ArmError(f"arm {arm!r}: {key} is set by the sweep, not by an "
                     "arm.")
    if key in overrides:
      raise ArmError(f"arm {arm!r}: {key} given twice.")
    overrides[key] = _setting_value(value.strip())
  return policy, overrides


def arm_policy(arm: str) -> str:
  """The arm's bit policy ("fp+weight_decay=1e-3" -> "fp")."""
  return arm.strip().split("+")[0].strip()


def arm_overrides(arm: str) -> Dict[str, Any]:
  """The arm's non-bit settings ({} for a bits-only arm)."""
  try:
    return parse_arm(arm)[1]
  except ArmError:
    return {}


def arm_slug(arm: str) -> str:
  """A folder-safe name of the arm ("fp+weight_decay=1e-3" -> "fp_weight_decay_1e_3")."""
  return re.sub(r"[^A-Za-z0-9]+", "_", arm).strip("_")
