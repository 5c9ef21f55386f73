"""`BitPolicy`: which layer gets which bits, from one string fit for a flag.

Grammar (comma separated, the first token is the default):

    policy   := bits ("," override)*
    bits     := "fp" | "w" B ["a" B] | "n" N ["a" B] | "a" B
                B := integer | "fp"     N := integer
    override := key "=" bits | "skip=" pattern ("+" pattern)*
    key      := "first" | "last" | layer class (Dense, Conv2D, ...)
              | layer name or glob (conv2d_3, block_*_expand)
              | "name:" name-or-glob | "type:" class   (to force a reading)

`n<b>` is the noise twin of `w<b>`: in training the weights get uniform noise
U(−Δ/2, Δ/2) with the step Δ the b-bit weight quantizer would use, and are not
rounded (`quantizers.WeightNoiseQuantizer`); a control arm that separates the
noise from the grid.

Examples: `fp` (no quantization), `w8`, `w4` (weight-only, the QReg
setting), `w4a8`, `n4` (noise only), `n4a8`,
`w4a8,first=w8a8,last=w8a8,conv2d_3=w2,Dense=w8`, `w4,skip=head_*,conv*=n4`.

Lookup order for a layer (first hit wins), stated once as qkeras does:
  1. `skip` patterns (the layer stays float),
  2. exact layer name,
  3. `first` / `last` (first and last layer with a kernel, in graph order),
  4. name globs, in the order given,
  5. layer class (nearest in the layer's MRO),
  6. the default.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Iterable, List, Optional, Tuple

from kqreg.qat import grid

__all__ = ["Bits", "BitPolicy", "PolicyError", "FLOAT", "register_layer_classes"]


class PolicyError(ValueError):
  """A policy string is malformed, or names layers a model does not have.

  Example:
  >>> import kqreg
  >>> try:
  ...   kqreg.BitPolicy.parse("w9")
  ... except kqreg.PolicyError as e:
  ...   print(type(e).__name__)
  PolicyError
  """


@dataclasses.dataclass(frozen=True)
class Bits:
  """Weight and activation bit-widths of one layer; None means float.

  Attributes:
    weight: weight bits, or None.
    activation: activation bits, or None.
    noise: the weights get the noise of `weight`-bit quantization instead of
      being quantized (the `n<b>` token).

  Example:
  >>> import kqreg
  >>> bits = kqreg.qat.Bits(weight=4, activation=8)
  >>> str(bits), bits.is_float, str(kqreg.qat.FLOAT)
  ('w4a8', False, 'fp')
  """
  weight: Optional[int] = None
  activation: Optional[int] = None
  noise: bool = False

  def __post_init__(self):
    grid.check_bits(self.weight, grid.WEIGHT_BITS, "weight_bits")
    grid.check_bits(self.activation, grid.ACTIVATION_BITS,
                          "activation_bits")
    if not isinstance(self.noise, bool):
      raise ValueError(
          f"`noise` must be a bool. Received: noise={self.noise!r}")
    if self.noise and self.weight is None:
      raise ValueError("`noise=True` needs `weight` bits: it is the noise of "
                       "weight quantization at that many bits.")

  @property
  def is_float(self) -> bool:
    return self.weight is None and self.activation is None

  def __str__(self) -> str:
    if self.is_float:
      return "fp"
    text = ("n" if self.noise else "w") + (
        str(self.weight) if self.weight is not None else "fp")
    if self.activation is not None:
      text += f"a{self.activation}"
    return text


FLOAT = Bits()

_BITS_RE = re.compile(
    r"^(?:(?P<kind>[wn])(?P<w>\d+|fp))?(?:a(?P<a>\d+|fp))?$")
_NAME_PREFIX = "name:"
_TYPE_PREFIX = "type:"
_GLOB_CHARS = frozenset("*?[")


def _parse_bits(text: str, token: str) -> Bits:
  text = text.strip().lower()
  if text in ("fp", "float", "fp32"):
    return FLOAT
  match = _BITS_RE.match(text)
  if not text or not match or (match["w"] is None and match["a"] is None):
    raise PolicyError(
        f"Bad bits {text!r} in policy token {token!r}: write `fp`, `w<b>`, "
        "`w<b>a<b>`, `a<b>` or the noise twin `n<b>`/`n<b>a<b>`, e.g. "
        "`w4a8`.")
  noise = match["kind"] == "n"
  if noise and match["w"] == "fp":
    raise PolicyError(
        f"Bad bits {text!r} in policy token {token!r}: `n` takes weight bits "
        "(the noise of b-bit quantization), e.g. `n4`; float weights are "
        "`wfp`.")

  def _number(value, allowed, what, fp_allowed=True):
    if value is None or value == "fp":
      return None
    bits = int(value)
    low, high = allowed
    if not low <= bits <= high:
      raise PolicyError(
          f"Bad {what} {bits} in policy token {token!r}: {what} must be "
          f"between {low} and {high}{', or fp' if fp_allowed else ''}.")
    return bits

  return Bits(_number(match["w"], grid.WEIGHT_BITS,
                      "noise bits" if noise else "weight bits",
                      fp_allowed=not noise),
              _number(match["a"], grid.ACTIVATION_BITS,
                      "activation bits"),
              noise=noise)


# Layer class names a bare key (`Dense=w8`) is read as; the Keras binding
# registers its layer classes (`register_layer_classes`), so this module stays
# free of Keras. `type:Name` works whatever is registered.
_LAYER_CLASS_NAMES: set = set()


def register_layer_classes(names: Iterable[str]) -> None:
  """Adds class names that a bare policy key is read as (`Dense=w8`).

  Example:
  >>> register_layer_classes(["MyBlock"])
  >>> BitPolicy.parse("w8,MyBlock=w4").types
  (('MyBlock', Bits(weight=4, activation=None, noise=False)),)
  """
  _LAYER_CLASS_NAMES.update(names)


def _keras_layer_classes() -> set:
  return _LAYER_CLASS_NAMES


@dataclasses.dataclass(frozen=True)
class BitPolicy:
  """Maps each layer of a model to its `Bits`.

  Attributes:
    default: bits of every layer no override names.
    first: bits of the first layer with a kernel, or None.
    last: bits of the last layer with a kernel, or None.
    names: `(name or glob, bits)` overrides, in the order given.
    types: `(layer class name, bits)` overrides.
    skip: names or globs of layers kept float.

  Example:
  >>> import kqreg
  >>> policy = kqreg.BitPolicy.parse("w4a8,first=w8a8")
  >>> str(policy.default), str(policy.first), policy.has_activation_bits
  ('w4a8', 'w8a8', True)
  """
  default: Bits = FLOAT
  first: Optional[Bits] = None
  last: Optional[Bits] = None
  names: Tuple[Tuple[str, Bits], ...] = ()
  types: Tuple[Tuple[str, Bits], ...] = ()
  skip: Tuple[str, ...] = ()

  @classmethod
  def parse(cls, text: str) -> "BitPolicy":
    """Parses a policy string (grammar in the module docstring).

    Raises:
      PolicyError: a token is malformed; the message quotes it.
    """
    if isinstance(text, BitPolicy):
      return text
    if not isinstance(text, str) or not text.strip():
      raise PolicyError(
          f"A bit policy must be a non-empty string such as 'w4a8'. "
          f"Received: {text!r}")
    tokens = [t.strip() for t in text.split(",")]
    if "=" in tokens[0]:
      raise PolicyError(
          f"The first policy token must be the default bits (e.g. 'w4a8'), "
          f"not an override. Received: {tokens[0]!r}")
    default = _parse_bits(tokens[0], tokens[0])
    fields = {"first": None, "last": None}
    names, types, skip = [], [], []
    layer_classes = _keras_layer_classes()
    for token in tokens[1:]:
      key, sep, value = token.partition("=")
      key, value = key.strip(), value.strip()
      if not sep or not key or not value:
        raise PolicyError(
            f"Bad policy token {token!r}: overrides are `key=bits`, e.g. "
            "`first=w8a8` or `conv2d_3=w2`.")
      if key == "skip":
        skip.extend(p.strip() for p in value.split("+") if p.strip())
        continue
      bits = _parse_bits(value, token)
      if key in ("first", "last"):
        if fields[key] is not None:
          raise PolicyError(f"`{key}` is set twice in policy {text!r}.")
        fields[key] = bits
      elif key.startswith(_TYPE_PREFIX):
        type_name = key[len(_TYPE_PREFIX):]
        if type_name not in layer_classes:
          raise PolicyError(
              f"Unknown layer class {type_name!r} in policy token {token!r}; "
              "use a tf_keras.layers class name such as Conv2D or Dense.")
        types.append((type_name, bits))
      elif key.startswith(_NAME_PREFIX):
        names.append((key[len(_NAME_PREFIX):], bits))
      elif key in layer_classes:
        types.append((key, bits))
      else:
        names.append((key, bits))
    return cls(default=default, names=tuple(names), types=tuple(types),
               skip=tuple(skip), **fields)

  def __str__(self) -> str:
    layer_classes = _keras_layer_classes()
    tokens = [str(self.default)]
    for key in ("first", "last"):
      if getattr(self, key) is not None:
        tokens.append(f"{key}={getattr(self, key)}")
    for name, bits in self.names:
      ambiguous = name in layer_classes or name in ("first", "last", "skip")
      tokens.append(f"{_NAME_PREFIX if ambiguous else ''}{name}={bits}")
    tokens.extend(f"{name}={bits}" for name, bits in self.types)
    if self.skip:
      tokens.append("skip=" + "+".join(self.skip))
    return ",".join(tokens)

  @property
  def is_float(self) -> bool:
    """True when no layer can get bits (e.g. `fp`)."""
    overrides = [b for _, b in self.names + self.types] + [self.first,
                                                            self.last]
    return self.default.is_float and all(b is None or b.is_float
                                         for b in overrides)

  @property
  def has_activation_bits(self) -> bool:
    """True when some layer can get activation bits (e.g. `w4a8`)."""
    every = [self.default, self.first, self.last] + [
        b for _, b in self.names + self.types]
    return any(b is not None and b.activation is not None for b in every)

  def bits_for(self, layer, *, is_first: bool = False,
               is_last: bool = False) -> Bits:
    """The bits of `layer`, by the lookup order of the module docstring."""
    name = layer.name
    if any(fnmatch.fnmatchcase(name, p) for p in self.skip):
      return FLOAT
    for pattern, bits in self.names:
      if pattern == name:
        return bits
    if is_first and self.first is not None:
      return self.first
    if is_last and self.last is not None:
      return self.last
    for pattern, bits in self.names:
      if _GLOB_CHARS & set(pattern) and fnmatch.fnmatchcase(name, pattern):
        return bits
    type_bits = dict(self.types)
    for cls in type(layer).__mro__:
      if cls.__name__ in type_bits:
        return type_bits[cls.__name__]
    return self.default

  def check_against(self, layers: Iterable) -> None:
    """Raises `PolicyError` if an override names nothing in `layers`."""
    layers = list(layers)
    names = [layer.name for layer in layers]
    class_names = {cls.__name__ for layer in layers
                   for cls in type(layer).__mro__}
    missing: List[str] = []
    for pattern, _ in self.names:
      if not fnmatch.filter(names, pattern):
        missing.append(f"layer {pattern!r}")
    for pattern in self.skip:
      if not fnmatch.filter(names, pattern):
        missing.append(f"skip pattern {pattern!r}")
    for type_name, _ in self.types:
      if type_name not in class_names:
        missing.append(f"layer class {type_name!r}")
    if missing:
      shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
      raise PolicyError(
          f"Policy {str(self)!r} names {', '.join(missing)}, which the model "
          f"does not have. Its layers: {shown}. Fix the name or drop the "
          "override.")
