"""The benchmark's targets and its markdown page, from `run_benchmark`'s dict."""

from __future__ import annotations

from typing import Dict, List, Optional

__all__ = ["check_targets", "markdown", "peers_markdown"]


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
           "the median of each round's step-time ratio to float (middle half "
           "in brackets); val acc on the validation split "
           f"({peers['val_examples']:,} images). TFLite: the plain converter "
           "(default optimizations, 64 training images as representative "
           "data); kernels as stored in the file, with the most distinct "
           "values in one output channel. A tool that cannot run here, or "
           "cannot quantize a layer, says why in the note.", "",
           "| model | tool | bits | val acc | × float | TFLite | bytes | "
           "kernels | note |", "|---|---|---|---|---|---|---|---|---|"]
  for r in peers["rows"]:
    tool = r["tool"] + (f" {r['version']}" if r["version"] else "")
    spread = (f" [{r['ratio_iqr'][0]:.2f}–{r['ratio_iqr'][1]:.2f}]"
              if r.get("ratio_iqr") else "")
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
  if results.get("peers"):
    lines += ["", *peers_markdown(results["peers"])]
  lines += ["", "## Targets (computed from the numbers above)", "",
            "| target | measured | holds |", "|---|---|---|"]
  for r in check_targets(results):
    verdict = {True: "yes", False: "**no**", None: "–"}[r["holds"]]
    lines.append(f"| {r['target']} | {r['measured']} | {verdict} |")
  if results.get("sweep"):
    first = results["sweep"][0]
    lines += ["", "## Sweep throughput (kqreg-sweep --workers)", "",
              f"{first['runs']} runs of the main job's model and data "
              f"({first['epochs']} epochs, {first['train_examples']} images, "
              "noise analysis on), timed whole per worker count.", "",
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
