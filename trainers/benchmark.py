"""Benchmarks kqreg against float and stock tfmot, in one process and run.

  kqreg-benchmark --output_dir=runs/benchmark          # full (~15-30 min)
  kqreg-benchmark --quick --output_dir=/tmp/bench      # reduced, < 2 min

Writes benchmark.json and benchmark.md (tables, machine) to --output_dir and
prints the tables. Timings are medians after warm-up; ratios are against the
float model measured the same way in the same run.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging

from trainers import flags as kqreg_flags

import numpy as np  # noqa: E402

from kqreg import benchmark  # noqa: E402
from kqreg.io_utils import atomic_write_json, atomic_write_text  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("output_dir", "runs/benchmark",
                    "Folder for benchmark.json and benchmark.md.")
flags.DEFINE_bool("quick", False,
                  "Reduced set (small CNN only, fewer repetitions): < 2 min.")
flags.DEFINE_integer("repeats", 5, "Repetitions per timing (median).",
                     lower_bound=1)
flags.DEFINE_integer("rounds", 10, "Interleaved rounds of 10 steps per step-"
                     "time comparison (paired median).", lower_bound=1)

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


def _step_times(models, repeats, steps, jit_options):
  rows = []
  for name, kwargs, shape in models:
    for jit in jit_options:
      variants = {variant: benchmark.build_variant(name, variant, shape, **kwargs)
                  for variant in benchmark.VARIANTS}
      timed = benchmark.paired_step_times(variants, shape, steps=steps,
                                          repeats=repeats, jit_compile=jit)
      for variant, result in timed.items():
        row = {"model": name, "variant": variant, "jit": jit,
               "step_ms": None, "ratio": None, "ratio_iqr": None,
               "note": result.get("error", "")}
        if "error" not in result:
          row.update(step_ms=result["step_s"] * 1e3, ratio=result["ratio"],
                     ratio_iqr=[result["ratio_low"], result["ratio_high"]])
          print(f"step time {name} {variant} jit={jit}: "
                f"{row['step_ms']:.1f} ms, {row['ratio']:.3f}x float", flush=True)
        rows.append(row)
  return rows


def _noise_costs(models, repeats):
  rows = []
  for name, kwargs, shape in models:
    model = benchmark.build_variant(name, "kqreg_w4", shape, **kwargs)
    x = np.random.default_rng(0).random((64, *shape), dtype=np.float32)
    model(x, training=True)  # ranges from the weights
    row = {"model": name, **benchmark.noise_cost(model, x, repeats=repeats)}
    rows.append(row)
    print(f"noise cost {name}: {row['params']:,} params, weight_noise "
          f"{row['weight_noise_s'] * 1e3:.1f} ms, propagation "
          f"{row['propagation_s'] * 1e3:.1f} ms", flush=True)
  return rows


def _tflite(quick):
  """File size and LiteRT latency of float32, int8 and packed int4 exports."""
  from kqreg import export  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  shape = (32, 32, 3)
  kwargs = {"widths": (16, 32, 64)} if quick else {}
  x = np.random.default_rng(0).random((32 if quick else 128, *shape),
                                      dtype=np.float32)
  rows, base = [], None
  folder = tempfile.mkdtemp(prefix="kqreg-bench-tflite-")
  for label, variant in (("float32", "float"), ("int8 (w8a8)", "kqreg_w8a8"),
                         ("int4 (w4a8)", "kqreg_w4a8")):
    model = benchmark.build_variant("cnn", variant, shape, **kwargs)
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
    mib = benchmark.peak_memory("cnn", variant, shape, steps=5 if quick else 30)
    rows.append({"model": "cnn", "variant": variant, "peak_rss_mib": mib})
    print(f"peak memory cnn {variant}: {mib:.0f} MiB", flush=True)
  base = rows[0]["peak_rss_mib"]
  for row in rows:
    row["ratio"] = row["peak_rss_mib"] / base
  return rows


def _fmt(value, spec):
  return "–" if value is None else format(value, spec)


def markdown(results) -> str:
  m = results["machine"]
  lines = [f"# kqreg benchmark{' (quick)' if results['quick'] else ''}", "",
           f"Machine: {m['cpu']}, {m['cores']} cores; TensorFlow "
           f"{m['tensorflow']}, tf_keras {m['tf_keras']}, tfmot {m['tfmot']}.",
           "", "## Training step time (batch 64)", "",
           "Variants of one model are timed in interleaved rounds; × float is "
           "the median of each round's ratio to float (middle half of the "
           "rounds in brackets).", "",
           "| model | variant | jit | ms/step | × float |", "|---|---|---|---|---|"]
  for r in results["step_time"]:
    spread = (f" [{r['ratio_iqr'][0]:.2f}–{r['ratio_iqr'][1]:.2f}]"
              if r.get("ratio_iqr") else "")
    lines.append(f"| {r['model']} | {r['variant']} | {r['jit']} | "
                 f"{_fmt(r['step_ms'], '.1f')} | {_fmt(r['ratio'], '.2f')}"
                 f"{spread} {r['note']}|")
  c = results["callback"]
  lines += ["", "## NoiseAnalysisCallback (every epoch, with probe)", "",
            "| epoch s without | epoch s with | ratio | callback s/epoch | share |",
            "|---|---|---|---|---|",
            f"| {c['epoch_s_without']:.2f} | {c['epoch_s_with']:.2f} | "
            f"{c['ratio']:.3f} | {c['callback_s_per_epoch']:.3f} | "
            f"{c['callback_share'] * 100:.1f}% |",
            "", "## Noise analysis cost per call", "",
            "| model | params | weight_noise ms | propagation ms |",
            "|---|---|---|---|"]
  for r in results["noise_cost"]:
    lines.append(f"| {r['model']} | {r['params']:,} | "
                 f"{r['weight_noise_s'] * 1e3:.1f} | "
                 f"{r['propagation_s'] * 1e3:.1f} |")
  lines += ["", "## TFLite (cnn, LiteRT, 1 thread)", "",
            "| format | bytes | × float | ms/image | × float | top-1 agreement |",
            "|---|---|---|---|---|---|"]
  for r in results["tflite"]:
    lines.append(f"| {r['format']} | {r['file_bytes']:,} | "
                 f"{r['size_ratio']:.3f} | {r['latency_ms']:.3f} | "
                 f"{r['latency_ratio']:.2f} | "
                 f"{_fmt(r['top1_agreement'], '.3f')} |")
  lines += ["", "## Targets (computed from the numbers above)", "",
            "| target | measured | holds |", "|---|---|---|"]
  for r in benchmark.check_targets(results):
    verdict = {True: "yes", False: "**no**", None: "–"}[r["holds"]]
    lines.append(f"| {r['target']} | {r['measured']} | {verdict} |")
  lines += ["", "## Peak resident memory (fresh process, training)", "",
            "| model | variant | MiB | × float |", "|---|---|---|---|"]
  for r in results["memory"]:
    lines.append(f"| {r['model']} | {r['variant']} | {r['peak_rss_mib']:.0f} "
                 f"| {r['ratio']:.2f} |")
  return "\n".join(lines) + "\n"


def _main(argv) -> None:
  logging.set_verbosity(logging.ERROR)  # TF/TFDS info and timing notes; kqreg warns via `warnings`
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  quick = FLAGS.quick
  repeats = 3 if quick else FLAGS.repeats
  results = {
      "quick": quick,
      "machine": benchmark.machine(),
      "command": " ".join(["kqreg-benchmark"] + sys.argv[1:]),
  }
  results["step_time"] = _step_times(
      _QUICK_MODELS if quick else _FULL_MODELS, 3 if quick else FLAGS.rounds,
      5 if quick else 10,
      (False,) if quick else (False, True))
  results["callback"] = benchmark.callback_overhead(
      epochs=3 if quick else 6,
      **({"widths": (16, 32, 64)} if quick else {}))
  print(f"noise callback: {results['callback']['ratio']:.3f}x epoch time",
        flush=True)
  results["noise_cost"] = _noise_costs(_NOISE_MODELS[:2] if quick else
                                       _NOISE_MODELS, repeats)
  results["tflite"] = _tflite(quick)
  results["memory"] = _memory(quick)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  atomic_write_json(os.path.join(FLAGS.output_dir, "benchmark.json"), results)
  text = markdown(results)
  atomic_write_text(os.path.join(FLAGS.output_dir, "benchmark.md"), text)
  print()
  print(text)


def main() -> None:
  app.run(_main, flags_parser=kqreg_flags.parser("kqreg-benchmark"))


if __name__ == "__main__":
  main()
