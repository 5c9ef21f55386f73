"""What noise analysis, export, memory and sweeps cost: measurements as dicts.

Figures are measured after warm-up and reported as the median of several
repetitions, next to a ratio against the float model measured the same way
in the same run; peak memory in fresh processes. Step times live in
`kqreg.study.step_timing`. `kqreg.study.benchmark_suite.run_benchmark` runs
them all; `kqreg.study.benchmark_report` formats them and checks the targets.
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
from typing import Dict, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from kqreg import kernels
from kqreg.classification import models as models_lib
from kqreg.noise import statistics as noise_lib
from kqreg.noise import propagation_probe as propagation
from kqreg.noise.callback import NoiseAnalysisCallback
from kqreg.qat.transform import quantize
from kqreg.study.benchmark.step_timing import (median_time, build_variant,
                                     child_env)

__all__ = [
    "machine",
    "callback_overhead",
    "noise_cost",
    "peak_memory",
    "sweep_throughput",
]


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
  propagation.propagation(model, x)
  return {
      "params": int(model.count_params()),
      "weight_noise_s": median_time(lambda: noise_lib.weight_noise(model),
                                     repeats),
      "propagation_s": median_time(lambda: propagation.propagation(model, x),
                                    repeats),
  }


_MEMORY_CHILD = """
import json, resource, sys
import kqreg
from kqreg.study.benchmark import step_timing as benchmark
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
  out = subprocess.run([sys.executable, "-c", code], env=child_env(), check=True,
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


# (row label, variant, storage) of the TFLite table; the last two rows are one
# w4a8 model stored two ways (`export_tflite(storage=...)`).
_TFLITE_ROWS = (("float32", "float", "size"),
                ("int8 (w8a8)", "kqreg_w8a8", "size"),
                ("int4 (w4a8)", "kqreg_w4a8", "size"),
                ("int4 grid in int8 (w4a8, speed)", "kqreg_w4a8", "speed"))


def _tflite(quick):
  """File size and LiteRT latency of float32, int8, packed int4 and
  speed-stored int4-grid exports."""
  from kqreg import export  # pylint: disable=g-import-not-at-top
  shape = (32, 32, 3)
  kwargs = {"widths": (16, 32, 64)} if quick else {}
  x = np.random.default_rng(0).random((32 if quick else 128, *shape),
                                      dtype=np.float32)
  rows, base, models = [], None, {}
  folder = tempfile.mkdtemp(prefix="kqreg-bench-tflite-")
  for label, variant, storage in _TFLITE_ROWS:
    if variant not in models:
      models[variant] = build_variant("cnn", variant, shape, **kwargs)
      models[variant](x, training=True)
    model = models[variant]
    path = os.path.join(folder, f"{variant}_{storage}.tflite")
    # The float32 row is this table's reference: no second float conversion.
    report = export.export_tflite(model, path, representative_data=x[:16],
                                  allow_float=variant == "float",
                                  float_reference=False, storage=storage)
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
# Sweep throughput.

# The label-noise main job's (configs/mnist_noisy_sweep.cfg).
LABEL_NOISE = 0.4


def sweep_throughput(*, quick: bool = False,
                     workers: Tuple[int, ...] = (1, 2)) -> List[Dict[str, object]]:
  """Runs per minute of a sweep of the label-noise main job's kind, by
  `--workers`.

  The same runs (configs/mnist_noisy_sweep.cfg's model and data, the main
  job until 2026-12-07; fewer epochs and seeds) are trained once per worker
  count into fresh folders, timed as a whole: process start-up, tracing,
  training, evaluation and the noise callback included, as a user's sweep
  pays them.
  """
  from kqreg.classification import task as classify
  from kqreg.study.sweep import runner as sweep
  runs, epochs, examples = (2, 1, 32) if quick else (8, 30, 500)
  rows = []
  for n in workers:
    folder = tempfile.mkdtemp(prefix=f"kqreg-bench-sweep-{n}-")
    configs = [classify.ClassifyConfig(
        model_dir=os.path.join(folder, f"run{i}"), dataset="kqreg_mnist",
        model="cnn", model_kwargs={"widths": (16, 32, 64),
                                   "batch_norm": False},
        train_examples=examples, label_noise=LABEL_NOISE, batch_size=64,
        learning_rate=0.003, epochs=epochs, bits="w4" if i % 2 else "fp",
        seed=i, verbose=0) for i in range(runs)]
    start = time.time()
    sweep.run_configs(configs, workers=n)
    seconds = time.time() - start
    rows.append({"workers": n, "runs": runs, "epochs": epochs,
                 "train_examples": examples, "label_noise": LABEL_NOISE,
                 "seconds": seconds, "runs_per_minute": 60.0 * runs / seconds})
    print(f"sweep throughput, {n} worker(s): {rows[-1]['runs_per_minute']:.2f} "
          "runs/min", flush=True)
  return rows
