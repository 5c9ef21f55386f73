"""Builds models by preset name: `build("resnet20", (32, 32, 3), 10)`.

Builders are imported lazily from the preset's `"module.function"` string so
naming a small model does not pull in `tf_keras.applications`.
"""

import importlib
from typing import Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tf_keras

from kqreg.classification.models.presets import MODELS
from kqreg.runs.config import ConfigError

# describe() reports parameter counts at this input / number of classes.
_DESCRIBE_SHAPE = (32, 32, 3)
_DESCRIBE_CLASSES = 10


class UnknownModelError(ConfigError):
  """A model name that is not in `MODELS`."""


class ModelOptionError(ConfigError):
  """A preset override (`--model_args`) the model does not have."""


def _builder(name: str):
  if name not in MODELS:
    raise UnknownModelError(
        f"Unknown model {name!r}; available models: {', '.join(MODELS)}.")
  module_name, function_name = MODELS[name]["builder"].rsplit(".", 1)
  module = importlib.import_module(f"kqreg.classification.models.{module_name}")
  return getattr(module, function_name)


def _check_shape(input_shape, num_classes) -> Tuple[int, int, int]:
  shape = tuple(input_shape)
  if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
    raise ValueError(f"input_shape={input_shape!r}: allowed is (height, "
                     "width, channels) of positive integers.")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes={num_classes!r}: allowed is a positive "
                     "integer.")
  return shape


def build(name: str, input_shape: Tuple[int, int, int], num_classes: int, *,
          seed: Optional[int] = None, **overrides) -> tf_keras.Model:
  """Builds the Functional tf_keras model of preset `name`.

  Outputs are logits (no softmax): train with `from_logits=True`.

  Args:
    name: a key of `MODELS`.
    input_shape: (height, width, channels), batch dimension excluded.
    num_classes: size of the `head` output.
    seed: if given, `tf_keras.utils.set_random_seed(seed)` runs first, so two
      builds with the same seed start from identical weights.
    **overrides: replace the preset's kwargs (only keys the preset lists).

  Raises:
    UnknownModelError: `name` is not in `MODELS` (the message lists them).
    ValueError: bad shape, class count, override key or value.
  """
  builder = _builder(name)
  shape = _check_shape(input_shape, num_classes)
  kwargs = dict(MODELS[name]["kwargs"])
  unknown = sorted(set(overrides) - set(kwargs))
  if unknown:
    raise ModelOptionError(
        f"Model {name!r} has no option(s) {', '.join(unknown)}; allowed: "
        f"{', '.join(kwargs) or 'none'}.")
  kwargs.update(overrides)
  if seed is not None:
    tf_keras.utils.set_random_seed(seed)
  try:
    return builder(shape, num_classes, **kwargs)
  except (ValueError, TypeError) as e:
    if not overrides:
      raise
    # A preset builds; what broke it is the user's override.
    raise ModelOptionError(f"Model {name!r}: {e}") from e


def describe() -> str:
  """Returns a table of model names, descriptions and parameter counts.

  Counts are measured by building every preset at 32x32x3 with 10 classes.
  """
  rows = [("name", "description", "params @32x32x3/10")]
  for name, preset in MODELS.items():
    params = build(name, _DESCRIBE_SHAPE, _DESCRIBE_CLASSES).count_params()
    rows.append((name, preset["description"], f"{params:,}"))
  widths = [max(len(row[i]) for row in rows) for i in range(3)]
  lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"
           for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)
