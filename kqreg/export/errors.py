"""The error every kqreg export step raises, and the bits TFLite can hold."""

from __future__ import annotations

__all__ = ["ExportError", "KERNEL_ACTIVATION_BITS", "EXACT_WEIGHT_BITS"]

# TFLite's integer kernels compute activations in 8 bits. (Its 16x8 mode
# wants symmetric int16 ranges with zero point 0, which kqreg's asymmetric
# activation quantizers do not train.)
KERNEL_ACTIVATION_BITS = 8

# Weight bits the file stores exactly as Q(w): all of kqreg's (2..8); 3, 5,
# 6 and 7 bits after `flatbuffer.regrid_weights`.
EXACT_WEIGHT_BITS = frozenset(range(2, 9))


class ExportError(ValueError):
  """A model or path kqreg cannot export to TFLite, with what to do about it.

  Example:
  >>> import kqreg
  >>> try:
  ...   kqreg.export.interpreter("missing.tflite")
  ... except kqreg.ExportError as e:
  ...   print(type(e).__name__)
  ExportError
  """
