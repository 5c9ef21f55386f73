"""What QAT, noise analysis and export cost: measurements as plain dicts.

Every figure is measured in the calling process after warm-up and reported as
the median of several repetitions, next to a ratio against the float model
measured the same way in the same run. `trainers/benchmark.py` formats them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from kqreg import models as models_lib
from kqreg import noise as noise_lib
from kqreg.callbacks import NoiseAnalysisCallback
from kqreg.quantize import quantize

__all__ = ["machine", "build_variant", "step_time", "paired_step_times",
           "callback_overhead", "noise_cost", "peak_memory", "check_targets",
           "VARIANTS"]

# Training variants compared per model: (label, how to build it).
VARIANTS = ("float", "tfmot_8bit", "kqreg_w8a8", "kqreg_w4a8", "kqreg_w4")


def machine() -> Dict[str, object]:
  """CPU model, core count and library versions, recorded with the numbers."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
          "tfmot": tfmot.__version__}


def build_variant(model_name: str, variant: str, input_shape, classes: int = 10,
                  **model_kwargs) -> tf_keras.Model:
  """The float model, stock tfmot's 8-bit QAT, or a kqreg policy of it."""
  model = models_lib.build(model_name, input_shape, classes, seed=0,
                           **model_kwargs)
  if variant == "float":
    return model
  if variant == "tfmot_8bit":
    return tfmot.quantization.keras.quantize_model(model)
  if variant.startswith("kqreg_"):
    return quantize(model, variant[len("kqreg_"):])
  raise ValueError(f"Unknown variant {variant!r}; use one of {VARIANTS}.")


def _median_time(fn: Callable[[], None], repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _compile_on_batch(model: tf_keras.Model, input_shape, batch_size: int,
                      jit_compile: bool):
  """Compiles `model` for timing; returns its fixed random batch."""
  rng = np.random.default_rng(0)
  x = tf.constant(rng.random((batch_size, *input_shape), dtype=np.float32))
  y = tf.constant(rng.integers(0, 10, batch_size))
  model.compile(tf_keras.optimizers.Adam(1e-3),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile)
  return x, y


def step_time(model: tf_keras.Model, input_shape, *, batch_size: int = 64,
              steps: int = 10, repeats: int = 5, warmup: int = 3,
              jit_compile: bool = False) -> float:
  """Median seconds per training step (fixed random batch, Adam)."""
  x, y = _compile_on_batch(model, input_shape, batch_size, jit_compile)
  for _ in range(warmup):
    model.train_on_batch(x, y)

  def _steps():
    for _ in range(steps):
      model.train_on_batch(x, y)

  return _median_time(_steps, repeats) / steps


def paired_step_times(models: Dict[str, tf_keras.Model], input_shape, *,
                      baseline: str = "float", batch_size: int = 64,
                      steps: int = 10, repeats: int = 5, warmup: int = 3,
                      jit_compile: bool = False) -> Dict[str, Dict[str, float]]:
  """Step times of several models measured in interleaved, paired rounds.

  Each round times `steps` training steps of every model back to back, in
  an order rotated from round to round, so that a slow spell of a shared
  machine falls on all of them. A model's ratio is the median over rounds
  of its time divided by `baseline`'s time in the same round.

  Returns:
    name -> {"step_s": median seconds per step, "ratio": paired median
    ratio to `baseline`, "ratio_low"/"ratio_high": the middle half of the
    per-round ratios (interquartile range)}; or {"error": message} for a
    model that failed to compile or run (XLA cannot compile some fake-quant
    graphs), which is left out of the rounds.

  Raises:
    ValueError: `baseline` is not one of `models`.
    RuntimeError: `baseline` itself failed to run.
  """
  if baseline not in models:
    raise ValueError(f"`baseline` {baseline!r} is not among {list(models)}.")
  batches, failed = {}, {}
  for name, model in models.items():
    try:
      batches[name] = _compile_on_batch(model, input_shape, batch_size,
                                        jit_compile)
      for _ in range(warmup):
        model.train_on_batch(*batches[name])
    except Exception as e:  # pylint: disable=broad-except
      failed[name] = {"error": f"{type(e).__name__}: {str(e)[:80]}"}
      batches.pop(name, None)
  if baseline in failed:
    raise RuntimeError(f"The baseline {baseline!r} failed to run "
                       f"(jit_compile={jit_compile}): {failed[baseline]['error']}")
  names = list(batches)
  times = {name: [] for name in names}
  for round_index in range(repeats):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      model, (x, y) = models[name], batches[name]
      start = time.perf_counter()
      for _ in range(steps):
        model.train_on_batch(x, y)
      times[name].append((time.perf_counter() - start) / steps)
  results = {}
  for name in names:
    ratios = [t / b for t, b in zip(times[name], times[baseline])]
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (
        ratios * 3)
    results[name] = {"step_s": statistics.median(times[name]),
                     "ratio": statistics.median(ratios),
                     "ratio_low": low, "ratio_high": high}
  return {name: results.get(name) or failed[name] for name in models}


class _EpochTimer(tf_keras.callbacks.Callback):

  def __init__(self):
    super().__init__()
    self.times: List[float] = []

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.times.append(time.perf_counter() - self._start)


class _TimedCallback(tf_keras.callbacks.Callback):
  """Runs `inner` and adds up the time its epoch-end work takes."""

  def __init__(self, inner: tf_keras.callbacks.Callback):
    super().__init__()
    self.inner = inner
    self.seconds: List[float] = []

  def set_model(self, model):
    super().set_model(model)
    self.inner.set_model(model)

  def on_train_begin(self, logs=None):
    self.inner.on_train_begin(logs)

  def on_epoch_begin(self, epoch, logs=None):
    self.inner.on_epoch_begin(epoch, logs)

  def on_epoch_end(self, epoch, logs=None):
    start = time.perf_counter()
    self.inner.on_epoch_end(epoch, logs)
    self.seconds.append(time.perf_counter() - start)

  def on_train_end(self, logs=None):
    self.inner.on_train_end(logs)


def callback_overhead(*, dataset: str = "kqreg_digits", model_name: str = "cnn",
                      bits: str = "w4", epochs: int = 4, batch_size: int = 64,
                      data_dir: Optional[str] = None,
                      **model_kwargs) -> Dict[str, float]:
  """Epoch time with and without `NoiseAnalysisCallback` (probe included).

  Both fits train the same QAT model on the dataset's full training split;
  the first epoch (tracing) is dropped. Also reports the callback's own time
  per epoch, which is what the ratio should reflect.
  """
  from kqreg import data as data_lib  # pylint: disable=g-import-not-at-top
  raw, info = data_lib.load(dataset, "train", data_dir=data_dir)
  val_raw, _ = data_lib.load(dataset, data_lib.validation_split(info),
                             data_dir=data_dir)
  train = data_lib.pipeline(raw, batch_size=batch_size, training=True)
  val = data_lib.pipeline(val_raw, batch_size=batch_size, training=False)
  probe = next(iter(data_lib.pipeline(val_raw, batch_size=16, training=False,
                                      cache=False)))[0]
  figures = {}
  for with_callback in (False, True):
    model = quantize(models_lib.build(model_name, info.image_shape,
                                      info.num_classes, seed=0, **model_kwargs),
                     bits)
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    timer = _EpochTimer()
    callbacks = [timer]
    timed = None
    if with_callback:
      timed = _TimedCallback(NoiseAnalysisCallback(
          tempfile.mkdtemp(prefix="kqreg-bench-"), probe_data=probe))
      callbacks.insert(0, timed)
    model.fit(train, validation_data=val, epochs=epochs, verbose=0,
              callbacks=callbacks)
    key = "with" if with_callback else "without"
    figures[f"epoch_s_{key}"] = statistics.median(timer.times[1:])
    if timed is not None:
      figures["callback_s_per_epoch"] = statistics.median(timed.seconds[1:])
  figures["ratio"] = figures["epoch_s_with"] / figures["epoch_s_without"]
  figures["callback_share"] = (figures["callback_s_per_epoch"] /
                               figures["epoch_s_with"])
  return figures


def noise_cost(model: tf_keras.Model, x: np.ndarray,
               repeats: int = 5) -> Dict[str, float]:
  """Seconds per `weight_noise` and `propagation` call on `model`."""
  noise_lib.weight_noise(model)
  noise_lib.propagation(model, x)
  return {
      "params": int(model.count_params()),
      "weight_noise_s": _median_time(lambda: noise_lib.weight_noise(model),
                                     repeats),
      "propagation_s": _median_time(lambda: noise_lib.propagation(model, x),
                                    repeats),
  }


_MEMORY_CHILD = """
import json, resource, sys
import kqreg
from kqreg import benchmark
model = benchmark.build_variant({model!r}, {variant!r}, {shape!r})
benchmark.step_time(model, {shape!r}, steps={steps}, repeats=1, warmup=1)
# VmHWM is this process's own peak: Linux carries ru_maxrss over from the
# parent across fork and exec, so it would report the benchmark's own peak.
with open("/proc/self/status") as f:
  peak = [int(l.split()[1]) for l in f if l.startswith("VmHWM:")]
print(json.dumps({{"maxrss_kb": peak[0] if peak else
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def peak_memory(model_name: str, variant: str, input_shape,
                steps: int = 20) -> float:
  """Peak resident memory (MiB) of a fresh process training `steps` steps."""
  code = _MEMORY_CHILD.format(model=model_name, variant=variant,
                              shape=tuple(input_shape), steps=steps)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                       capture_output=True, text=True, timeout=900)
  line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
  return json.loads(line)["maxrss_kb"] / 1024.0


def _ratio(rows, model, variant, jit=False) -> Optional[float]:
  for row in rows:
    if (row["model"], row["variant"], row["jit"]) == (model, variant, jit):
      return row["ratio"]
  return None


def check_targets(results: Dict) -> List[Dict[str, object]]:
  """The project's targets against a benchmark run's numbers.

  Targets (issue 8): kqreg w8a8's step-time overhead over float at most half
  of stock tfmot's on the same model; weight-only w4 within 5% of float; the
  noise callback under 2% of an epoch; int8 TFLite at most 0.27x the float
  file and no slower; packed int4 at most 0.15x the float file.

  Returns:
    One row per target and model: `target`, `measured` (text), `holds`
    (None when the run lacks the figure).
  """
  rows = []
  models = list(dict.fromkeys(r["model"] for r in results["step_time"]))
  for model in models:
    tfmot_r = _ratio(results["step_time"], model, "tfmot_8bit")
    w8a8 = _ratio(results["step_time"], model, "kqreg_w8a8")
    w4 = _ratio(results["step_time"], model, "kqreg_w4")
    holds = None
    if tfmot_r is not None and w8a8 is not None:
      holds = (w8a8 - 1) <= 0.5 * (tfmot_r - 1)
    rows.append({
        "target": f"{model}: w8a8 overhead <= half of stock tfmot's",
        "measured": (f"tfmot {_pct(tfmot_r)}, kqreg w8a8 {_pct(w8a8)}"),
        "holds": holds})
    rows.append({"target": f"{model}: w4 within 5% of float",
                 "measured": f"w4 {_pct(w4)}",
                 "holds": None if w4 is None else w4 <= 1.05})
  share = results["callback"]["callback_share"]
  rows.append({"target": "noise callback < 2% of epoch time",
               "measured": f"{share * 100:.1f}%", "holds": share < 0.02})
  by_format = {r["format"]: r for r in results["tflite"]}
  int8, int4 = by_format.get("int8 (w8a8)"), by_format.get("int4 (w4a8)")
  if int8:
    rows.append({"target": "int8 TFLite <= 0.27x float file",
                 "measured": f"{int8['size_ratio']:.3f}x",
                 "holds": int8["size_ratio"] <= 0.27})
    rows.append({"target": "int8 TFLite latency <= 1.0x float",
                 "measured": f"{int8['latency_ratio']:.2f}x",
                 "holds": int8["latency_ratio"] <= 1.0})
  if int4:
    rows.append({"target": "packed int4 TFLite <= 0.15x float file",
                 "measured": f"{int4['size_ratio']:.3f}x",
                 "holds": int4["size_ratio"] <= 0.15})
  return rows


def _pct(ratio: Optional[float]) -> str:
  return "–" if ratio is None else f"{(ratio - 1) * 100:+.0f}%"
