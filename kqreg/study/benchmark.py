"""What QAT, noise analysis and export cost: measurements as plain dicts.

Every figure is measured in the calling process after warm-up and reported as
the median of several repetitions, next to a ratio against the float model
measured the same way in the same run. `run_benchmark` runs them all;
`kqreg.study.benchmark_report` formats them and checks the targets.
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
from typing import Callable, Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
from scipy import stats as scipy_stats
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from kqreg import kernels
from kqreg import models as models_lib
from kqreg import noise as noise_lib
from kqreg.callbacks import NoiseAnalysisCallback
from kqreg.quantize import quantize

__all__ = ["machine", "build_variant", "step_time", "paired_step_times",
           "callback_overhead", "noise_cost", "peak_memory", "sweep_throughput",
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
          "tfmot": tfmot.__version__,
          "kqreg_kernels": kernels.kernels_status()}


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
  _compile(model, jit_compile)
  return x, y


def _compile(model: tf_keras.Model, jit_compile: bool = False) -> None:
  model.compile(tf_keras.optimizers.Adam(1e-3),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile)


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
  machine falls on all of them. A round's figure for a model is the median
  of its steps after the first: the first step after a switch from another
  model runs cold (reported as `switch_s`, its excess over the median). A
  model's ratio is the geometric mean over rounds of its time divided by
  `baseline`'s time in the same round.

  Returns:
    name -> {"step_s": median seconds per step, "ratio": paired ratio to
    `baseline`, "ratio_low"/"ratio_high": its 95% confidence interval,
    "round_ratios": the per-round ratios, "switch_s": the first step's
    excess}; or {"error": message} for a
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
  first = {name: [] for name in names}
  for round_index in range(repeats):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      model, (x, y) = models[name], batches[name]
      step_times = []
      for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        step_times.append(time.perf_counter() - start)
      # The first step after switching models pays for the switch (QAT
      # models the most; a training run never switches), and single steps
      # stall now and then (median, not mean).
      times[name].append(statistics.median(step_times[1:] or step_times))
      first[name].append(step_times[0] - times[name][-1])
  results = _paired_ratios(times, baseline)
  for name, result in results.items():
    result["switch_s"] = statistics.median(first[name])
  return {name: results.get(name) or failed[name] for name in models}


def _paired_ratios(times: Dict[str, List[float]],
                   baseline: str) -> Dict[str, Dict[str, float]]:
  """Per-round times (equal counts) -> each model's ratio to `baseline`.

  The ratio is the geometric mean of the per-round ratios, with a 95%
  t-interval on it (computed on their logarithms): rounds are paired, so a
  slow spell of the machine divides out, and the interval says how well the
  rounds pin the ratio down. `round_ratios` keeps them for paired targets.
  """
  results = {}
  for name, values in times.items():
    ratios = [t / b for t, b in zip(values, times[baseline])]
    logs = np.log(ratios)
    mean = float(np.mean(logs))
    half = 0.0
    if len(logs) > 1:
      half = float(scipy_stats.t.ppf(0.975, len(logs) - 1) *
                   np.std(logs, ddof=1) / np.sqrt(len(logs)))
    results[name] = {"step_s": statistics.median(values),
                     "ratio": float(np.exp(mean)),
                     "ratio_low": float(np.exp(mean - half)),
                     "ratio_high": float(np.exp(mean + half)),
                     "round_ratios": [float(r) for r in ratios]}
  return results


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
  raw, val_raw, _, info, _ = data_lib.load_splits(dataset, data_dir)
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
from kqreg.study import benchmark
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
  out = subprocess.run([sys.executable, "-c", code], env=_child_env(), check=True,
                       capture_output=True, text=True, timeout=900)
  line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
  return json.loads(line)["maxrss_kb"] / 1024.0


# (name, kwargs, input shape) of the models timed per step.
_FULL_MODELS = (
    ("cnn", {}, (32, 32, 3)),
    ("resnet20", {}, (32, 32, 3)),
    ("mobilenetv2", {}, (96, 96, 3)),
)
_QUICK_MODELS = (("cnn", {"widths": (16, 32, 64)}, (32, 32, 3)),)
_NOISE_MODELS = (
    ("mlp", {"hidden": (64,)}, (32, 32, 3)),
    ("cnn", {"widths": (16, 32, 64)}, (32, 32, 3)),
    ("cnn", {}, (32, 32, 3)),
    ("resnet20", {}, (32, 32, 3)),
    ("mobilenetv2", {}, (96, 96, 3)),
)


_STEP_CHILD = """
import json
from kqreg.study import benchmark
variants = {{v: benchmark.build_variant({model!r}, v, {shape!r}, **{kwargs!r})
            for v in benchmark.VARIANTS}}
timed = benchmark.paired_step_times(variants, {shape!r}, steps={steps},
                                    repeats={rounds}, jit_compile={jit!r})
print(json.dumps(timed))
"""


def _child_env() -> Dict[str, str]:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _timed_in_fresh_processes(name, kwargs, shape, *, steps, rounds, jit,
                              processes):
  """`paired_step_times` in `processes` fresh processes, pooled.

  One process settles into a mode of its own: on 2 shared cores the same
  resnet20 w8a8 measured 1.32x float in one process (every round within
  ±0.07) and 1.20x in the next, tfmot 1.40x and 1.86x. Rounds of one
  process are therefore not independent; the unit is the process. Its
  ratio is the geometric mean of its rounds, and the interval comes from
  the spread between processes (t with processes − 1 degrees of freedom).
  """
  per_process = []
  for _ in range(processes):
    code = _STEP_CHILD.format(model=name, shape=tuple(shape), kwargs=kwargs,
                              steps=steps, rounds=rounds, jit=jit)
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(),
                         check=True, capture_output=True, text=True,
                         timeout=3600)
    per_process.append(json.loads(
        [l for l in out.stdout.splitlines() if l.startswith("{")][-1]))
  pooled = {}
  for variant in VARIANTS:
    runs = [p[variant] for p in per_process]
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
      pooled[variant] = {"error": errors[0]}
      continue
    logs = [float(np.mean(np.log(r["round_ratios"]))) for r in runs]
    mean, half = float(np.mean(logs)), 0.0
    if len(logs) > 1:
      half = float(scipy_stats.t.ppf(0.975, len(logs) - 1) *
                   np.std(logs, ddof=1) / np.sqrt(len(logs)))
    pooled[variant] = {
        "step_s": statistics.median(r["step_s"] for r in runs),
        "switch_s": statistics.median(r["switch_s"] for r in runs),
        "ratio": float(np.exp(mean)), "ratio_low": float(np.exp(mean - half)),
        "ratio_high": float(np.exp(mean + half)),
        "round_ratios": [float(np.exp(v)) for v in logs]}
  return pooled


# Not timed under XLA: mobilenetv2's float step alone takes 2.4 s there on a
# 2-core CPU (XLA is slower than TensorFlow's own kernels on every model).
_NO_JIT_MODELS = ("mobilenetv2",)


def _step_times(models, repeats, steps, jit_options, processes=1):
  """Rows of the step-time table; `processes` > 1 times in fresh processes."""
  rows = []
  for name, kwargs, shape in models:
    for jit in jit_options:
      if jit and name in _NO_JIT_MODELS:
        continue
      # XLA's rounds are few: its steps are slow on a CPU.
      rounds = max(3, repeats // 4) if jit else repeats
      if processes > 1:
        timed = _timed_in_fresh_processes(
            name, kwargs, shape, steps=steps, jit=jit, processes=processes,
            rounds=max(2, rounds // processes))
      else:
        variants = {variant: build_variant(name, variant, shape, **kwargs)
                    for variant in VARIANTS}
        timed = paired_step_times(variants, shape, steps=steps, repeats=rounds,
                                  jit_compile=jit)
      for variant, result in timed.items():
        row = {"model": name, "variant": variant, "jit": jit,
               "step_ms": None, "ratio": None, "ratio_ci": None,
               "note": result.get("error", "")}
        if "error" not in result:
          row.update(step_ms=result["step_s"] * 1e3,
                     switch_ms=result["switch_s"] * 1e3, ratio=result["ratio"],
                     ratio_ci=[result["ratio_low"], result["ratio_high"]],
                     round_ratios=result["round_ratios"])
          print(f"step time {name} {variant} jit={jit}: "
                f"{row['step_ms']:.1f} ms, {row['ratio']:.3f}x float "
                f"[{row['ratio_ci'][0]:.3f}, {row['ratio_ci'][1]:.3f}]",
                flush=True)
        rows.append(row)
  return rows


def _noise_costs(models, repeats):
  rows = []
  for name, kwargs, shape in models:
    model = build_variant(name, "kqreg_w4", shape, **kwargs)
    x = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
    model(x, training=True)  # ranges from the weights
    row = {"model": name, **noise_cost(model, x, repeats=repeats)}
    rows.append(row)
    print(f"noise cost {name}: {row['params']:,} params, weight_noise "
          f"{row['weight_noise_s'] * 1e3:.1f} ms, propagation "
          f"{row['propagation_s'] * 1e3:.1f} ms", flush=True)
  return rows


def _tflite(quick):
  """File size and LiteRT latency of float32, int8 and packed int4 exports."""
  from kqreg import export  # pylint: disable=g-import-not-at-top
  shape = (32, 32, 3)
  kwargs = {"widths": (16, 32, 64)} if quick else {}
  x = np.random.default_rng(0).random((32 if quick else 128, *shape),
                                      dtype=np.float32)
  rows, base = [], None
  folder = tempfile.mkdtemp(prefix="kqreg-bench-tflite-")
  for label, variant in (("float32", "float"), ("int8 (w8a8)", "kqreg_w8a8"),
                         ("int4 (w4a8)", "kqreg_w4a8")):
    model = build_variant("cnn", variant, shape, **kwargs)
    model(x, training=True)
    path = os.path.join(folder, f"{variant}.tflite")
    report = export.export_tflite(model, path, representative_data=x[:16],
                                  allow_float=variant == "float")
    check = export.verify_tflite(path, model, x)
    size, latency = report["size_bytes"], check["latency_ms_per_example"]
    if base is None:
      base = (size, latency)
    rows.append({"format": label, "file_bytes": size,
                 "size_ratio": size / base[0], "latency_ms": latency,
                 "latency_ratio": latency / base[1],
                 "top1_agreement": check.get("top1_agreement")})
    print(f"tflite {label}: {size:,} bytes, {latency:.3f} ms/image", flush=True)
  return rows


def _memory(quick):
  rows = []
  shape = (32, 32, 3)
  # Each variant is a fresh process (TensorFlow's import alone is ~0.5 GiB).
  variants = ("float", "kqreg_w4a8") if quick else ("float", "tfmot_8bit",
                                                     "kqreg_w8a8",
                                                     "kqreg_w4a8")
  for variant in variants:
    mib = peak_memory("cnn", variant, shape, steps=5 if quick else 30)
    rows.append({"model": "cnn", "variant": variant, "peak_rss_mib": mib})
    print(f"peak memory cnn {variant}: {mib:.0f} MiB", flush=True)
  base = rows[0]["peak_rss_mib"]
  for row in rows:
    row["ratio"] = row["peak_rss_mib"] / base
  return rows



# ----------------------------------------------------------------------------
# Peers: other low-bit Keras tools on the same models, data and training.

def sweep_throughput(*, quick: bool = False,
                     workers: Tuple[int, ...] = (1, 2)) -> List[Dict[str, object]]:
  """Runs per minute of a sweep of the main job's kind, by `--workers`.

  The same runs (configs/mnist_sweep.cfg's model and data, fewer epochs and
  seeds) are trained once per worker count into fresh folders, timed as a
  whole: process start-up, tracing, training, evaluation and the noise
  callback included, as a user's sweep pays them.
  """
  from kqreg import classify  # pylint: disable=g-import-not-at-top
  from kqreg.study import sweep  # pylint: disable=g-import-not-at-top
  runs, epochs, examples = (2, 1, 32) if quick else (8, 30, 500)
  rows = []
  for n in workers:
    folder = tempfile.mkdtemp(prefix=f"kqreg-bench-sweep-{n}-")
    configs = [classify.ClassifyConfig(
        model_dir=os.path.join(folder, f"run{i}"), dataset="kqreg_mnist",
        model="cnn", model_kwargs={"widths": (16, 32, 64),
                                   "batch_norm": False},
        train_examples=examples, label_noise=0.4, batch_size=64,
        learning_rate=0.003, epochs=epochs, bits="w4" if i % 2 else "fp",
        seed=i, verbose=0) for i in range(runs)]
    start = time.time()
    sweep.run_configs(configs, workers=n)
    seconds = time.time() - start
    rows.append({"workers": n, "runs": runs, "epochs": epochs,
                 "train_examples": examples, "seconds": seconds,
                 "runs_per_minute": 60.0 * runs / seconds})
    print(f"sweep throughput, {n} worker(s): {rows[-1]['runs_per_minute']:.2f} "
          "runs/min", flush=True)
  return rows
