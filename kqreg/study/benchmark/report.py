"""The benchmark's targets and its markdown page, from `run_benchmark`'s dict."""

from __future__ import annotations

from typing import Dict, List, Optional

from kqreg.study.sweep.statistics import mean_interval

__all__ = ["check_targets", "markdown", "peers_markdown", "UNDECIDED"]


def _row(rows, model, variant, jit=False) -> Optional[Dict]:
  for row in rows:
    if (row["model"], row["variant"], row["jit"]) == (model, variant, jit):
      return row if row.get("ratio") is not None else None
  return None


def _verdict(low: float, high: float, limit: float):
  """True if the whole interval is <= limit, False if above it, else undecided."""
  if high <= limit:
    return True
  if low > limit:
    return False
  return UNDECIDED


UNDECIDED = "undecided"
"""A target whose 95% interval straddles its limit: more rounds would decide."""


def _overhead_target(model: str, tfmot_row, kqreg_row,
                     label: str = "w8a8") -> Dict[str, object]:
  """kqreg's overhead <= half of tfmot's, judged per round (the same rounds)."""
  target = f"{model}: {label} overhead <= half of stock tfmot's"
  if tfmot_row is None or kqreg_row is None:
    return {"target": target, "measured": "–", "holds": None}
  measured = (f"tfmot {_pct_ci(tfmot_row)}, "
              f"kqreg {label} {_pct_ci(kqreg_row)}")
  rounds = list(zip(tfmot_row.get("round_ratios") or [],
                    kqreg_row.get("round_ratios") or []))
  if not rounds:  # Point figures only: judged on them.
    excess = (kqreg_row["ratio"] - 1) - 0.5 * (tfmot_row["ratio"] - 1)
    return {"target": target, "measured": measured, "holds": excess <= 0}
  # Per round: kqreg's overhead minus half of tfmot's; the target holds where
  # the whole interval on its mean is at or below 0.
  mean, low, high = mean_interval([(k - 1) - 0.5 * (t - 1) for t, k in rounds])
  measured += (f"; {label} − ½·tfmot overhead {mean * 100:+.0f} points "
               f"[{low * 100:+.0f}, {high * 100:+.0f}], n = {len(rounds)}")
  return {"target": target, "measured": measured,
          "holds": _verdict(low, high, 0.0)}


def check_targets(results: Dict) -> List[Dict[str, object]]:
  """The project's targets against a benchmark run's numbers.

  Targets (issue 8): kqreg w8a8's step-time overhead over float at most half
  of stock tfmot's on the same model (also with frozen activation ranges,
  where the run timed that variant); weight-only w4 within 5% of float; the
  noise callback under 2% of an epoch; int8 TFLite at most 0.27x the float
  file and no slower; packed int4 at most 0.15x the float file. Step-time
  targets are judged on 95% intervals: `holds` is True when the whole
  interval meets the target, False when none of it does, and `UNDECIDED`
  when it straddles the limit.

  Returns:
    One row per target and model: `target`, `measured` (text), `holds`
    (None when the run lacks the figure).
  """
  rows = []
  step = results["step_time"]
  models = list(dict.fromkeys(r["model"] for r in step))
  for model in models:
    tfmot_row = _row(step, model, "tfmot_8bit")
    rows.append(_overhead_target(model, tfmot_row,
                                 _row(step, model, "kqreg_w8a8")))
    frozen = _row(step, model, "kqreg_w8a8_frozen")
    if frozen is not None:
      rows.append(_overhead_target(model, tfmot_row, frozen,
                                   "w8a8 (frozen ranges)"))
    w4 = _row(step, model, "kqreg_w4")
    holds = None
    if w4 is not None:
      low, high = w4.get("ratio_ci") or (w4["ratio"], w4["ratio"])
      holds = _verdict(low, high, 1.05)
    rows.append({"target": f"{model}: w4 within 5% of float",
                 "measured": f"w4 {_pct_ci(w4)}", "holds": holds})
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
  speed = by_format.get("int4 grid in int8 (w4a8, speed)")
  if speed and int8:
    ratio = speed["latency_ms"] / int8["latency_ms"]
    rows.append({"target": "w4a8 storage=speed latency within 10% of w8a8",
                 "measured": f"{ratio:.2f}x w8a8",
                 "holds": ratio <= 1.10})
  return rows


def _pct_ci(row: Optional[Dict]) -> str:
  """"+16% [+13, +19]": a row's ratio to float as overhead, with its interval."""
  if row is None:
    return "–"
  text = f"{(row['ratio'] - 1) * 100:+.0f}%"
  if row.get("ratio_ci"):
    low, high = row["ratio_ci"]
    text += f" [{(low - 1) * 100:+.0f}, {(high - 1) * 100:+.0f}]"
  return text


def _fmt(value, spec):
  return "–" if value is None else format(value, spec)


def peers_markdown(peers: Dict) -> List[str]:
  """The peers section: one row per tool, bits and model, or its reason."""
  shape = "×".join(str(d) for d in peers["input_shape"])
  lines = [f"## Peers ({peers['dataset']} {shape}, {peers['epochs']} "
           f"epoch(s) of {peers['train_examples']:,} images, batch "
           f"{peers['batch_size']})", "",
           "Each tool quantizes the same float model (seed 0), and all train "
           "on the same batches (Adam 1e-3; BatchNormalization momentum "
           f"{peers.get('bn_momentum', 'as built')}, so that eval-mode "
           "statistics follow a short training) in paired rounds: × float is "
           "the geometric mean of each round's step-time ratio to float (95% "
           "interval in brackets); val acc on the validation split "
           f"({peers['val_examples']:,} images). TFLite: the plain converter "
           "(default optimizations, 64 training images as representative "
           "data); kernels as stored in the file, with the most distinct "
           "values in one output channel. A tool that cannot run here, or "
           "cannot quantize a layer, says why in the note.", "",
           "| model | tool | bits | val acc | × float | TFLite | bytes | "
           "kernels | note |", "|---|---|---|---|---|---|---|---|---|"]
  for r in peers["rows"]:
    tool = r["tool"] + (f" {r['version']}" if r["version"] else "")
    spread = (f" [{r['ratio_ci'][0]:.2f}–{r['ratio_ci'][1]:.2f}]"
              if r.get("ratio_ci") else "")
    exported = {True: "yes", False: "**no**", None: "–"}[r["exported"]]
    kernels = r["kernels"] or "–"
    if r["kernel_levels"]:
      kernels += f" (≤{r['kernel_levels']} levels)"
    note = r["note"]
    if r["float_ops"]:
      note = f"{r['float_ops']} conv/dense op(s) in float. {note}".strip()
    lines.append(f"| {r['model']} | {tool} | {r['bits']} | "
                 f"{_fmt(r['accuracy'], '.3f')} | "
                 f"{_fmt(r['ratio'], '.2f')}{spread} | {exported} | "
                 f"{_fmt(r['file_bytes'], ',')} | {kernels} | "
                 f"{note.replace('|', '/')} |")
  return lines


def markdown(results) -> str:
  m = results["machine"]
  lines = [f"# kqreg benchmark{' (quick)' if results['quick'] else ''}", "",
           f"Machine: {m['cpu']}, {m['cores']} cores; TensorFlow "
           f"{m['tensorflow']}, tf_keras {m['tf_keras']}, tfmot {m['tfmot']}."
           f" kqreg's fake-quant gradient kernel: "
           f"{m.get('kqreg_kernels', 'not recorded')}.",
           "", "## Training step time (batch 64)", "",
           "Variants of one model are timed in interleaved rounds; × float is "
           "the geometric mean of each round's ratio to float, with its 95% "
           "interval in brackets (from the spread between fresh processes, "
           f"{results.get('step_time_processes', 1)} per model, or between "
           "rounds when 1); a step is what `fit` runs per batch (the train "
           "function on a dataset iterator), and a round's time is the "
           "median of its steps "
           "after the first, which runs cold after a switch from another "
           "model (its excess is the last column). A target holds when its "
           "whole interval meets it, and is undecided when the interval "
           "straddles it.", "",
           "| model | variant | jit | ms/step | × float | first step after a "
           "switch |", "|---|---|---|---|---|---|"]
  for r in results["step_time"]:
    spread = (f" [{r['ratio_ci'][0]:.2f}–{r['ratio_ci'][1]:.2f}]"
              if r.get("ratio_ci") else "")
    lines.append(f"| {r['model']} | {r['variant']} | {r['jit']} | "
                 f"{_fmt(r['step_ms'], '.1f')} | {_fmt(r['ratio'], '.2f')}"
                 f"{spread} {r['note']}| {_fmt(r.get('switch_ms'), '+.0f')} ms |")
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
  if results.get("peers"):
    lines += ["", *peers_markdown(results["peers"])]
  lines += ["", "## Targets (computed from the numbers above)", "",
            "| target | measured | holds |", "|---|---|---|"]
  for r in check_targets(results):
    verdict = {True: "yes", False: "**no**", None: "–",
               UNDECIDED: UNDECIDED}[r["holds"]]
    lines.append(f"| {r['target']} | {r['measured']} | {verdict} |")
  if results.get("sweep"):
    first = results["sweep"][0]
    lines += ["", "## Sweep throughput (kqreg-sweep --workers)", "",
              f"{first['runs']} runs of the label-noise study's model and data "
              f"({first['epochs']} epochs, {first['train_examples']} images, "
              f"{first['label_noise']:.0%} label noise, noise "
              "analysis on; configs/mnist_noisy_sweep.cfg), timed whole per "
              "worker count.",
              "",
              "| workers | runs | seconds | runs/min |", "|---|---|---|---|"]
    for r in results["sweep"]:
      lines.append(f"| {r['workers']} | {r['runs']} | {r['seconds']:.1f} | "
                   f"{r['runs_per_minute']:.2f} |")
  lines += ["", "## Peak resident memory (fresh process, training)", "",
            "| model | variant | MiB | × float |", "|---|---|---|---|"]
  for r in results["memory"]:
    lines.append(f"| {r['model']} | {r['variant']} | {r['peak_rss_mib']:.0f} "
                 f"| {r['ratio']:.2f} |")
  return "\n".join(lines) + "\n"
