"""Traced noise functions cached on the model, rebuilt when its kernels change.

Tracing one graph over every kernel is worth it for a callback that runs each
epoch; the cache keeps that trace until a wrapper, weight or quantizer is
replaced.
"""

from __future__ import annotations

from typing import List, Tuple

from kqreg.qat.introspect import QuantizedWeight

__all__ = ["cached_trace", "trace_signature"]


def trace_signature(qws: List[QuantizedWeight], wrappers=()) -> Tuple:
  """The objects a traced function closes over, to tell when they change."""
  return tuple(wrappers) + tuple(
      obj for qw in qws
      for obj in (qw.wrapper, qw.weight, qw.quantizer, *qw.variables.values()))


def cached_trace(model, key: str, signature: Tuple, build):
  """A per-model cache of traced functions, rebuilt when `signature` changes.

  A traced function keeps the wrappers, weights and quantizers it was traced
  with; if a wrapper's `_weight_vars` or the layers change, a stale one would
  report the old ones. Compared by identity (`==` on variables is
  elementwise).
  """
  cache = model.__dict__.setdefault("_kqreg_noise_cache", {})
  cached = cache.get(key)
  if (cached is None or len(cached[0]) != len(signature) or
      any(a is not b for a, b in zip(cached[0], signature))):
    cached = cache[key] = (signature, build())
  return cached[1]
