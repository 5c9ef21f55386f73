"""kqreg's fake-quant kernels: TensorFlow's values to the bit, and their fallbacks."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import kqreg  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from kqreg import kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_compiler():
  return any(shutil.which(c) for c in (os.environ.get("CXX"), "c++", "g++") if c)


def _kernels_expected():
  """Where a C++ compiler is, and in CI (whose machines have g++), kqreg's
  kernels must build and load: there a missing kernel fails these tests."""
  return _has_compiler() or os.environ.get("CI") == "true"


@pytest.fixture
def loaded_kernels():
  """Fails unless the compiled kernels are loaded: comparing TensorFlow's
  ops with themselves would prove nothing. Every machine this suite runs on
  has gcc (the kernels' own fallback without one is tested below)."""
  status = kernels.kernels_status()
  assert status.startswith("in use, built at "), (
      f"kqreg's kernels are not loaded ({status}); install a C++ compiler "
      "to run these tests")
  assert kernels._state["module"] is not None  # pylint: disable=protected-access
  return kernels._state["module"]  # pylint: disable=protected-access


def test_kernel_builds_where_a_compiler_is():
  status = kernels.kernels_status()
  if _kernels_expected():
    assert status.startswith("in use, built at "), status
    assert os.path.exists(status[len("in use, built at "):])
  else:
    assert status == "not in use: no C++ compiler found ($CXX, c++ or g++)"


def _gradients(fake_quant, x, low, high, bits, narrow, jit=False):
  @tf.function(jit_compile=jit)
  def run(x, upstream):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = fake_quant(x, low, high, num_bits=bits, narrow_range=narrow)
    return y, tape.gradient(y, x, output_gradients=upstream)

  upstream = tf.constant(np.random.default_rng(1).normal(size=x.shape), tf.float32)
  y, dx = run(tf.constant(x), upstream)
  graph = run.get_concrete_function(tf.constant(x), upstream).graph
  ops = {op.type for op in graph.get_operations()}
  return y.numpy(), dx.numpy(), ops


@pytest.mark.parametrize("bits,narrow", [(2, False), (4, True), (8, False), (16, False)])
@pytest.mark.parametrize("low,high", [(-1.3, 2.1), (0.0, 3.0), (0.0, 0.0), (0.4, 2.0)])
def test_values_and_input_gradients_are_tensorflows_to_the_bit(bits, narrow, low, high,
                                                              loaded_kernels):
  del loaded_kernels  # the kernel must be in use, or this compares TF with TF
  rng = np.random.default_rng(bits)
  # Inside, outside and exactly on the nudged range's ends.
  x = rng.normal(0.5, 2.0, size=(4, 9, 9, 3)).astype(np.float32)
  x.flat[:5] = [low, high, 0.0, -0.0, np.nan]
  want_y, want_dx, want_ops = _gradients(tf.quantization.fake_quant_with_min_max_vars,
                                         x, low, high, bits, narrow)
  got_y, got_dx, got_ops = _gradients(kernels.fake_quant_with_min_max_vars,
                                      x, low, high, bits, narrow)
  np.testing.assert_array_equal(got_y, want_y)
  np.testing.assert_array_equal(got_dx, want_dx)
  assert "FakeQuantWithMinMaxVarsGradient" in want_ops
  # Kqreg's gradient kernel computed `got_dx`, not TensorFlow's.
  assert "KqregFakeQuantInputGradient" in got_ops
  assert "FakeQuantWithMinMaxVarsGradient" not in got_ops
  # The range's own gradients are not computed: 0 < dx only inside it.
  if (low, high) != (0.0, 0.0):
    assert 0 < np.count_nonzero(got_dx) < x.size


def _relu_gradients(fused, x, low, high, bits, narrow, relu6):
  activation = tf.nn.relu6 if relu6 else tf.nn.relu

  @tf.function
  def run(x, upstream):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = (kernels.relu_fake_quant(x, low, high, bits, narrow, relu6) if fused else
           tf.quantization.fake_quant_with_min_max_vars(
               activation(x), low, high, num_bits=bits, narrow_range=narrow))
    return y, tape.gradient(y, x, output_gradients=upstream)

  upstream = tf.constant(np.random.default_rng(1).normal(size=x.shape), tf.float32)
  y, dx = run(tf.constant(x), upstream)
  ops = {op.type for op in run.get_concrete_function(tf.constant(x), upstream).graph
         .get_operations()}
  return y.numpy(), dx.numpy(), ops


@pytest.mark.parametrize("relu6", [False, True])
@pytest.mark.parametrize("bits,narrow", [(2, False), (4, True), (8, False), (16, False)])
@pytest.mark.parametrize("low,high", [(-6.0, 6.0), (0.0, 3.7), (-0.3, 7.1), (0.0, 0.0),
                                      (0.4, 2.0)])
def test_fused_relu_and_fake_quant_are_tensorflows_two_ops_to_the_bit(relu6, bits, narrow,
                                                                     low, high,
                                                                     loaded_kernels):
  del loaded_kernels  # the kernel must be in use, or this compares TF with TF
  rng = np.random.default_rng(bits)
  # Odd sizes (vector loops have tails), and values on every edge: the
  # range's ends, 0, -0, 6 (Relu6's cap) and NaN.
  x = rng.normal(0.5, 4.0, size=(3, 7, 11, 5)).astype(np.float32)
  x.flat[:7] = [low, high, 0.0, -0.0, 6.0, np.nan, -np.inf]
  want_y, want_dx, _ = _relu_gradients(False, x, low, high, bits, narrow, relu6)
  got_y, got_dx, ops = _relu_gradients(True, x, low, high, bits, narrow, relu6)
  # NaN, -0 and all: the same bits.
  np.testing.assert_array_equal(got_y.view(np.int32), want_y.view(np.int32))
  np.testing.assert_array_equal(got_dx.view(np.int32), want_dx.view(np.int32))
  assert {"KqregReluFakeQuant", "KqregReluFakeQuantGradient"} <= ops
  assert not ops & {"Relu", "Relu6", "ReluGrad", "Relu6Grad", "FakeQuantWithMinMaxVars"}
  if (low, high) != (0.0, 0.0):  # the masks do cut: some gradients are 0, not all
    assert 0 < np.count_nonzero(got_dx) < x.size


def test_without_the_kernels_relu_fake_quant_leaves_tensorflows_ops(monkeypatch):
  # No compiler, XLA, a GPU or KQREG_KERNELS=0: the caller keeps TF's ops.
  monkeypatch.setattr(kernels, "_usable", lambda: False)
  x = tf.constant([-1.0, 0.5, 2.0])
  assert kernels.relu_fake_quant(x, 0.0, 1.0, 8, False, False) is None
  np.testing.assert_array_equal(
      kernels.fake_quant_with_min_max_vars(x, 0.0, 1.0, 8, False).numpy(),
      tf.quantization.fake_quant_with_min_max_vars(x, 0.0, 1.0).numpy())


def test_fused_activation_names_a_relu_in_a_graph_only():
  with tf.Graph().as_default():
    x = tf.constant([1.0, -1.0])
    assert kernels.fused_activation(tf.nn.relu(x)) is False
    assert kernels.fused_activation(tf.nn.relu6(x)) is True
    assert kernels.fused_activation(tf.nn.sigmoid(x)) is None
  # An eager tensor has no producing op: nothing to fuse.
  assert kernels.fused_activation(tf.nn.relu(tf.constant([1.0]))) is None


def test_xla_functions_keep_tensorflows_gradient():
  x = np.random.default_rng(0).normal(size=(2, 5, 5, 4)).astype(np.float32)
  # XLA's own fake_quant rounds differently from TensorFlow's kernel; both jit.
  want_y, want_dx, _ = _gradients(tf.quantization.fake_quant_with_min_max_vars,
                                  x, -1.0, 1.0, 8, False, jit=True)
  got_y, got_dx, ops = _gradients(kernels.fake_quant_with_min_max_vars,
                                  x, -1.0, 1.0, 8, False, jit=True)
  np.testing.assert_array_equal(got_y, want_y)
  np.testing.assert_array_equal(got_dx, want_dx)
  assert "KqregFakeQuantInputGradient" not in ops


_FALLBACK = """
import warnings, numpy as np
import kqreg
import tensorflow as tf
from kqreg import kernels
with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter("always")
  status = kernels.kernels_status()
x = tf.constant(np.linspace(-3, 3, 24, dtype=np.float32))
with tf.GradientTape() as tape:
  tape.watch(x)
  y = kernels.fake_quant_with_min_max_vars(x, -1.0, 1.0, 8, False)
dx = tape.gradient(y, x).numpy()
print(status)
print([str(w.message) for w in caught])
print(int(dx.sum()))
"""


def _fallback(tmp_path, **env):
  run_env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3",
                 KQREG_CACHE_DIR=str(tmp_path), **env)
  done = subprocess.run([sys.executable, "-c", _FALLBACK], env=run_env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  return done.stdout.strip().splitlines()[-3:]


def test_a_failed_build_warns_with_the_compilers_reason_and_training_goes_on(tmp_path):
  status, warned, grad_sum = _fallback(tmp_path, CXX=shutil.which("false") or "/bin/false")
  assert status == "not in use: RuntimeError: false exited with 1: no output"
  assert "could not build its fake-quant kernels" in warned
  assert "KQREG_KERNELS=0" in warned
  # TensorFlow's gradient instead: 1 inside [-1, 1], 0 outside.
  assert int(grad_sum) == int(np.sum(np.abs(np.linspace(-3, 3, 24)) <= 1.0))
  assert not list(tmp_path.glob("*.so"))


def test_the_switch_turns_the_kernel_off_without_a_warning(tmp_path):
  status, warned, _ = _fallback(tmp_path, KQREG_KERNELS="0")
  assert status == "not in use: turned off by KQREG_KERNELS=0"
  assert warned == "[]"



_FIRST_FIT = """
import numpy as np
import kqreg, tf_keras
model = tf_keras.Sequential([tf_keras.Input((6,)),
                             tf_keras.layers.Dense(8, activation="relu"),
                             tf_keras.layers.Dense(3)])
qat = kqreg.quantize(model, "w8a8")
qat.compile("adam", "mse")
qat.fit(np.ones((8, 6)), np.ones((8, 3)), verbose=0)
print(kqreg.kernels.kernels_status())
"""


def test_the_first_traced_step_logs_no_autograph_warnings():
  # AutoGraph warns once per function per process, so only a fresh one shows it.
  done = subprocess.run([sys.executable, "-c", _FIRST_FIT],
                        env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip().splitlines()[-1].startswith("in use")
  assert "AutoGraph could not transform" not in done.stderr
