"""kqreg's custom TensorFlow kernels (`fake_quant.cc`), built on first use.

Each computes what TensorFlow's ops compute, to the bit, in fewer passes over
the activation (tests/test_kernels.py):

- `fake_quant_with_min_max_vars`: TensorFlow's op of that name, forward
  unchanged, whose gradient comes from `KqregFakeQuantInputGradient`:
  TensorFlow's own Nudge and mask, in one pass. TensorFlow's gradient kernel
  also sums the gradients outside the range for min and max, two more
  passes that tfmot's untrained range variables throw away. On a
  64×32×32×16 activation the quantizer's forward and backward take
  two thirds of the time (0.78 against 1.18 ms on 2 cores).
- `relu_fake_quant`: fake_quant(relu(x)) (or relu6) in one kernel each way,
  where TensorFlow runs the ReLU, the fake-quant, the fake-quant's gradient
  and the ReLU's gradient as four passes. `ActivationQuantizer` uses it
  whenever its input comes straight out of a ReLU.

The kernels are compiled the first time a training graph needs them, with
the C++ compiler (`$CXX`, else `c++`/`g++`) and `tf.sysconfig`'s flags, into
`$KQREG_CACHE_DIR` (default `~/.cache/kqreg`), once per TensorFlow version
and source. Where they cannot be built (no compiler, no headers), or under
XLA, on a GPU, or with `KQREG_KERNELS=0`, TensorFlow's ops are used: the
same values, more slowly. A failed build warns once, with the compiler's
reason.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from typing import Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from kqreg import _tfmot

__all__ = ["fake_quant_with_min_max_vars", "relu_fake_quant", "fused_activation",
           "kernels_status", "ENV_SWITCH",
           "ENV_CACHE_DIR"]

ENV_SWITCH = "KQREG_KERNELS"
"""Set to 0 to train with TensorFlow's ops instead of kqreg's kernels."""

ENV_CACHE_DIR = "KQREG_CACHE_DIR"
"""Where compiled kernels are kept (default ~/.cache/kqreg)."""

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "fake_quant.cc")

_lock = threading.Lock()
_state = {"loaded": False, "module": None, "reason": "not built yet"}


def _compiler() -> Optional[str]:
  found = (shutil.which(name) for name in (os.environ.get("CXX"), "c++", "g++")
           if name)
  return next((path for path in found if path), None)


def _cache_dir() -> str:
  return os.environ.get(ENV_CACHE_DIR) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
      "kqreg")


# Vectorized loops whose floats round exactly as TensorFlow's: no fused
# multiply-add; -fno-trapping-math lets floor() vectorize and changes no
# value; AVX is what TensorFlow's x86 wheels require of the CPU anyway.
_OPTIMIZE = ["-O3", "-ffp-contract=off", "-fno-trapping-math"] + (
    ["-mavx"] if platform.machine().lower() in ("x86_64", "amd64") else [])


def _build(compiler: str) -> str:
  """Compiles the kernel unless an identical build is cached; returns its path."""
  with open(_SOURCE, "rb") as f:
    source = f.read()
  flags = (_OPTIMIZE + tf.sysconfig.get_compile_flags() +
           tf.sysconfig.get_link_flags())
  key = hashlib.sha256(b"\0".join(
      [source, tf.__version__.encode(), compiler.encode(),
       " ".join(flags).encode()])).hexdigest()[:16]
  folder = _cache_dir()
  target = os.path.join(folder, f"fake_quant-{key}.so")
  if os.path.exists(target):
    return target
  os.makedirs(folder, exist_ok=True)
  # Built beside the target and renamed into place, so that processes
  # building at once (test workers, sweep workers) never load a partial file.
  fd, partial = tempfile.mkstemp(suffix=".so", dir=folder)
  os.close(fd)
  command = [compiler, "-std=c++17", "-shared", "-fPIC", "-w", _SOURCE, "-o",
             partial, *flags]
  try:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
      lines = done.stderr.splitlines()
      first = ([l for l in lines if "error" in l] or lines or ["no output"])[0]
      raise RuntimeError(f"{os.path.basename(compiler)} exited with "
                         f"{done.returncode}: {first.strip()[:300]}")
    os.replace(partial, target)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return target


def _load():
  """The compiled op module, or None with `_state['reason']` saying why."""
  with _lock:
    if _state["loaded"]:
      return _state["module"]
    _state["loaded"] = True
    if os.environ.get(ENV_SWITCH, "1") == "0":
      _state["reason"] = f"turned off by {ENV_SWITCH}=0"
      return None
    compiler = _compiler()
    if compiler is None:
      _state["reason"] = "no C++ compiler found ($CXX, c++ or g++)"
    else:
      try:
        path = _build(compiler)
        _state["module"] = tf.load_op_library(path)
        _state["reason"] = f"built at {path}"
        return _state["module"]
      except (OSError, RuntimeError, subprocess.SubprocessError,
              tf.errors.NotFoundError) as e:
        _state["reason"] = f"{type(e).__name__}: {e}"
    warnings.warn(
        "kqreg could not build its fake-quant kernels ("
        f"{_state['reason']}); quantizers train with TensorFlow's ops "
        f"instead: the same values, slower. Set {ENV_SWITCH}=0 to skip the "
        "attempt.", RuntimeWarning, stacklevel=3)
    return None


def kernels_status() -> str:
  """Whether kqreg's kernels are in use in this process, and why (not)."""
  module = _load()
  return ("in use, " if module is not None else "not in use: ") + _state["reason"]


# Called while Keras traces a layer: left to AutoGraph, the file checks of
# `_load` would each log a "could not transform" warning.
@tf.autograph.experimental.do_not_convert
def _usable() -> bool:
  if _tfmot.in_xla_context():
    return False
  # Registered for CPU only: on a GPU it would copy every activation to host.
  if tf.config.list_logical_devices("GPU"):
    return False
  return _load() is not None


def fake_quant_with_min_max_vars(inputs: tf.Tensor, min_value: tf.Tensor,
                                 max_value: tf.Tensor, num_bits: int,
                                 narrow_range: bool) -> tf.Tensor:
  """`tf.quantization.fake_quant_with_min_max_vars`, backward in one pass.

  Values and input gradients equal TensorFlow's to the bit. No gradient
  reaches `min_value` and `max_value`, as none reaches tfmot's non-trainable
  range variables.
  """
  if not _usable():
    return tf.quantization.fake_quant_with_min_max_vars(
        inputs, min_value, max_value, num_bits=num_bits,
        narrow_range=narrow_range)
  module = _state["module"]
  return _with_gradient(
      tf.quantization.fake_quant_with_min_max_vars,
      module.kqreg_fake_quant_input_gradient, inputs, min_value, max_value,
      num_bits=num_bits, narrow_range=narrow_range)


def _with_gradient(forward, backward, x, min_value, max_value, **attrs):
  """forward(x, min, max, **attrs), its gradient to x from backward(dy, x, ...).

  No gradient reaches the range: tfmot's range variables are not trained.
  """
  min_value = tf.stop_gradient(min_value)
  max_value = tf.stop_gradient(max_value)

  @tf.custom_gradient
  def _op(x):
    def _grad(dy):
      return backward(dy, x, min_value, max_value, **attrs)
    return forward(x, min_value, max_value, **attrs), _grad

  return _op(x)


_RELU_OPS = {"Relu": False, "Relu6": True}


def fused_activation(tensor: tf.Tensor) -> Optional[bool]:
  """`relu_fake_quant`'s `relu6` if `tensor` comes straight out of a ReLU.

  True for Relu6, False for Relu, None for any other op and for eager
  tensors, which have no producing op.
  """
  try:
    return _RELU_OPS.get(tensor.op.type)
  except AttributeError:
    return None


def relu_fake_quant(features: tf.Tensor, min_value: tf.Tensor,
                    max_value: tf.Tensor, num_bits: int, narrow_range: bool,
                    relu6: bool) -> Optional[tf.Tensor]:
  """`fake_quant_with_min_max_vars(relu(features))` in one pass, or None.

  `relu6` picks `tf.nn.relu6` instead of `tf.nn.relu`. Values and the
  gradient to `features` equal those of TensorFlow's two ops to the bit, and
  each direction reads the activation once instead of twice. None where
  kqreg's kernels are not in use: the caller keeps TensorFlow's ops.
  """
  if not _usable():
    return None
  module = _state["module"]
  return _with_gradient(
      module.kqreg_relu_fake_quant, module.kqreg_relu_fake_quant_gradient,
      features, min_value, max_value, num_bits=num_bits,
      narrow_range=narrow_range, relu6=relu6)
