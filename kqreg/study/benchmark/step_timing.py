"""Step time against float, in paired rounds: what QAT costs per training step.

`paired_step_times` times several variants of one model in interleaved
rounds in this process; `step_time_rows` spreads those rounds over fresh
processes and turns them into the benchmark's rows, each ratio with its 95%
interval. `kqreg.study.benchmark` holds the other measurements.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from kqreg import _tfmot
from kqreg.classification import models as models_lib
from kqreg.qat.transform import quantize
from kqreg.qat.ranges import freeze_activation_ranges
from kqreg.study.sweep.statistics import geometric_mean_interval

__all__ = ["VARIANTS", "build_variant", "training_step", "step_time",
           "paired_step_times",
           "step_time_rows", "paired_ratios", "compile_for_timing",
           "median_time", "child_env"]

# Training variants compared per model: (label, how to build it).
# "_frozen": with its activation ranges frozen (`--freeze_ranges_after`).
VARIANTS = ("float", "tfmot_8bit", "kqreg_w8a8", "kqreg_w8a8_frozen",
            "kqreg_w4a8", "kqreg_w4")


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
    model = quantize(model, variant[len("kqreg_"):].removesuffix("_frozen"))
    if variant.endswith("_frozen"):
      freeze_activation_ranges(model)
    return model
  raise ValueError(f"Unknown variant {variant!r}; use one of {VARIANTS}.")


def median_time(fn: Callable[[], None], repeats: int) -> float:
  """Median seconds of `repeats` calls of `fn`."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def training_step(model: tf_keras.Model, input_shape, batch_size: int = 64,
                  jit_compile: bool = False) -> Callable[[], None]:
  """Compiles `model`; returns one training step on a fixed random batch.

  The step is what `fit` runs per batch: the model's train function on a
  dataset iterator. `train_on_batch` would build a new data adapter and
  iterator on every call, and on a 2-core VM that turned a third to a half
  of resnet20's steps into ~150 ms ones whatever the model (float, tfmot
  and kqreg alike), while `fit` ran the same steps steadily at 94–134 ms.
  """
  rng = np.random.default_rng(0)
  x = tf.constant(rng.random((batch_size, *input_shape), dtype=np.float32))
  y = tf.constant(rng.integers(0, 10, batch_size))
  compile_for_timing(model, jit_compile)
  _tfmot.build_step_state(model, y[:1])  # the first step then traces once
  batches = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
  train_function = model.make_train_function()
  return lambda: train_function(batches)


def compile_for_timing(model: tf_keras.Model, jit_compile: bool = False) -> None:
  """Adam 1e-3 on sparse cross-entropy: the training every timed model does."""
  model.compile(tf_keras.optimizers.Adam(1e-3),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile)


def step_time(model: tf_keras.Model, input_shape, *, batch_size: int = 64,
              steps: int = 10, repeats: int = 5, warmup: int = 3,
              jit_compile: bool = False) -> float:
  """Median seconds per training step (fixed random batch, Adam)."""
  step = training_step(model, input_shape, batch_size, jit_compile)
  for _ in range(warmup):
    step()

  def _steps():
    for _ in range(steps):
      step()

  return median_time(_steps, repeats) / steps


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
  run_step, failed = {}, {}
  for name, model in models.items():
    try:
      run_step[name] = training_step(model, input_shape, batch_size,
                                     jit_compile)
      for _ in range(warmup):
        run_step[name]()
    except Exception as e:  # pylint: disable=broad-except
      failed[name] = {"error": f"{type(e).__name__}: {str(e)[:80]}"}
      run_step.pop(name, None)
  if baseline in failed:
    raise RuntimeError(f"The baseline {baseline!r} failed to run "
                       f"(jit_compile={jit_compile}): {failed[baseline]['error']}")
  names = list(run_step)
  times = {name: [] for name in names}
  first = {name: [] for name in names}
  for round_index in range(repeats):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      step, step_times = run_step[name], []
      for _ in range(steps):
        start = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - start)
      # The first step after switching models pays for the switch (QAT
      # models the most; a training run never switches), and single steps
      # stall now and then (median, not mean).
      times[name].append(statistics.median(step_times[1:] or step_times))
      first[name].append(step_times[0] - times[name][-1])
  results = paired_ratios(times, baseline)
  for name, result in results.items():
    result["switch_s"] = statistics.median(first[name])
  return {name: results.get(name) or failed[name] for name in models}


def paired_ratios(times: Dict[str, List[float]],
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
    ratio, low, high = geometric_mean_interval(ratios)
    results[name] = {"step_s": statistics.median(values), "ratio": ratio,
                     "ratio_low": low, "ratio_high": high,
                     "round_ratios": [float(r) for r in ratios]}
  return results


_STEP_CHILD = """
import json
from kqreg.study.benchmark import step_timing
variants = {{v: step_timing.build_variant({model!r}, v, {shape!r}, **{kwargs!r})
            for v in step_timing.VARIANTS}}
timed = step_timing.paired_step_times(variants, {shape!r}, steps={steps},
                                      repeats={rounds}, jit_compile={jit!r})
print(json.dumps(timed))
"""


def child_env() -> Dict[str, str]:
  """The environment of a measuring child: this checkout first on its path."""
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
    out = subprocess.run([sys.executable, "-c", code], env=child_env(),
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
    per_run = [geometric_mean_interval(r["round_ratios"])[0] for r in runs]
    ratio, low, high = geometric_mean_interval(per_run)
    pooled[variant] = {
        "step_s": statistics.median(r["step_s"] for r in runs),
        "switch_s": statistics.median(r["switch_s"] for r in runs),
        "ratio": ratio, "ratio_low": low, "ratio_high": high,
        "round_ratios": per_run}
  return pooled


# Not timed under XLA: mobilenetv2's float step alone takes 2.4 s there on a
# 2-core CPU (XLA is slower than TensorFlow's own kernels on every model).
_NO_JIT_MODELS = ("mobilenetv2",)


def step_time_rows(models, repeats: int, steps: int, jit_options,
                   processes: int = 1) -> List[Dict[str, object]]:
  """Rows of the step-time table; `processes` > 1 times (without XLA) in
  fresh processes."""
  rows = []
  for name, kwargs, shape in models:
    for jit in jit_options:
      if jit and name in _NO_JIT_MODELS:
        continue
      # XLA's rounds are few: its steps are slow on a CPU.
      rounds = max(3, repeats // 4) if jit else repeats
      # XLA rows are context, not targets: timed in this process only.
      if processes > 1 and not jit:
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
