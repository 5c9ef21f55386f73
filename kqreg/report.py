"""Bit-width sweep report: aggregate runs, judge against seed spread, plot.

Input: the result.json and history.csv of each run of a sweep. Output, in
one folder: `runs.csv` (one row per run), `results.csv` (per bit setting:
mean and std over seeds), `report.md` (the table, the verdict, the plots) and
PNGs:

  val_loss.png   validation loss per epoch per bit setting (QReg Figure 1)
  val_map50.png  detection only: validation mAP@0.5 per epoch
  gap.png        generalization gap against bits
  noise.png      measured std(δ) and the Δ/√12 model against bits (log)

What is aggregated, compared and drawn depends on the task: `CLASSIFICATION`
or `DETECTION` (a `SweepTask`).

The verdict is computed from the numbers: a bit setting's gap differs from
full precision only if the difference of the means exceeds the seed-to-seed
spread (the two standard deviations combined). Nothing is tuned to a
conclusion: with one seed, or overlapping spreads, it says so.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from kqreg.io_utils import atomic_write_text

__all__ = ["RunRecord", "SweepTask", "val_loss_rise", "CLASSIFICATION", "DETECTION", "TASKS",
           "aggregate", "verdict", "markdown_table", "write_report",
           "METRICS", "DETECTION_METRICS"]

# (result key, column label) of the figures a classification sweep aggregates
# per bit setting.
METRICS = (
    ("train_accuracy", "train acc"),
    ("val_accuracy", "val acc"),
    ("test_accuracy", "test acc"),
    ("train_loss", "train loss"),
    ("val_loss", "val loss"),
    ("gap_accuracy", "gap acc (train-val)"),
    ("gap_loss", "gap loss (val-train)"),
    ("val_loss_rise", "val loss rise"),
    ("noise_std", "std(δ)"),
    ("noise_model_std", "Δ/√12"),
)


DETECTION_METRICS = (
    ("train_loss", "train loss"),
    ("val_loss", "val loss"),
    ("gap_loss", "gap loss (val-train)"),
    ("val_loss_rise", "val loss rise"),
    ("val_map50", "val mAP@0.5"),
    ("val_map", "val mAP@[.5:.95]"),
    ("noise_std", "std(δ)"),
    ("noise_model_std", "Δ/√12"),
)


@dataclasses.dataclass(frozen=True)
class SweepTask:
  """What a sweep of one task reports.

  Attributes:
    name: the `--task` it belongs to.
    metrics: (result key, column label) aggregated per bit setting.
    quality: (key, label) of the headline validation figure, higher better.
    gaps: (key, name in the verdict, axis label) of the generalization gaps
      compared with full precision and plotted in gap.png.
    curves: (history key, axis label, log scale) drawn per epoch, one PNG
      each, named after the key.
    legend: what the table's columns mean, for report.md.
  """
  name: str
  metrics: Tuple[Tuple[str, str], ...]
  quality: Tuple[str, str]
  gaps: Tuple[Tuple[str, str, str], ...]
  curves: Tuple[Tuple[str, str, bool], ...]
  legend: str


_LOSS_GAP = ("gap_loss", "loss gap", "val loss − train loss")
_COMMON_LEGEND = ("gap loss = validation − train loss; val loss rise = final "
                  "minus minimum of the validation loss's moving average over "
                  "a tenth of the epochs (overfitting); std(δ) and "
                  "Δ/√12 are means over quantized layers at the end of "
                  "training.")
CLASSIFICATION = SweepTask(
    "classify", METRICS, ("val_accuracy", "val acc"),
    (_LOSS_GAP, ("gap_accuracy", "accuracy gap", "train acc − val acc")),
    (("val_loss", "validation loss (log)", True),),
    "Mean ± std over seeds. gap acc = train − validation accuracy; "
    + _COMMON_LEGEND)
DETECTION = SweepTask(
    "detect", DETECTION_METRICS, ("val_map50", "val mAP@0.5"), (_LOSS_GAP,),
    (("val_loss", "validation loss (log)", True),
     ("val_map50", "validation mAP@0.5", False)),
    "Mean ± std over seeds. Losses are keras-cv's YOLOv8 loss (box CIoU + "
    "class BCE); mAP is COCO-style on the validation split; " + _COMMON_LEGEND)
TASKS = {task.name: task for task in (CLASSIFICATION, DETECTION)}


def val_loss_rise(curve: Sequence[float]):
  """How far validation loss ends above its minimum, and the noise on that.

  Validation loss jitters from epoch to epoch (detection losses by several
  percent), so both ends are read from its trailing moving average over
  `window` = max(3, epochs // 10) epochs: rise = last average − lowest
  average. The noise is the standard error of the difference of two such
  averages, estimated from the epoch-to-epoch jitter of the last `window`
  epochs. Overfitting is called only when the rise exceeds twice that.

  Returns:
    (rise, noise, window), or None for fewer than 2 * window epochs.
  """
  curve = np.asarray([v for v in curve if math.isfinite(v)], np.float64)
  window = max(3, len(curve) // 10)
  if len(curve) < 2 * window:
    return None
  smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
  jitter = float(np.std(np.diff(curve[-window:]), ddof=1)) / math.sqrt(2)
  noise = jitter * math.sqrt(2.0 / window)
  return float(smooth[-1] - smooth.min()), noise, window


@dataclasses.dataclass
class RunRecord:
  """One finished run: its bits, seed, result dict and per-epoch history."""
  bits: str
  seed: int
  result: Dict
  history: List[Dict[str, float]]

  def value(self, key: str) -> Optional[float]:
    if key == "noise_std":
      return (self.result.get("noise") or {}).get("delta_std")
    if key == "noise_model_std":
      return (self.result.get("noise") or {}).get("model_std")
    if key in ("val_loss_rise", "val_loss_rise_noise"):
      rise = val_loss_rise([h["val_loss"] for h in self.history
                            if "val_loss" in h])
      if rise is None:
        return None
      return rise[0] if key == "val_loss_rise" else rise[1]
    value = self.result.get(key)
    return None if value is None else float(value)


def _mean_std(values: Sequence[Optional[float]]):
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return None, None, 0
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std, len(values)


def aggregate(records: Sequence[RunRecord], bits_order: Sequence[str],
              task: SweepTask = CLASSIFICATION) -> List[Dict]:
  """Per bit setting (in `bits_order`): mean/std of every `task.metrics` key."""
  rows = []
  for bits in bits_order:
    runs = [r for r in records if r.bits == bits]
    if not runs:
      continue
    row = {"bits": bits, "seeds": len(runs)}
    for key in [k for k, _ in task.metrics] + ["val_loss_rise_noise"]:
      mean, std, _ = _mean_std([r.value(key) for r in runs])
      row[f"{key}_mean"], row[f"{key}_std"] = mean, std
    rows.append(row)
  return rows


def _fmt(mean, std, digits=3):
  if mean is None:
    return "–"
  if std is None:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: Sequence[Dict],
                   task: SweepTask = CLASSIFICATION) -> str:
  """The aggregated rows as a Markdown table (mean ± std over seeds)."""
  header = ["bits", "seeds"] + [label for _, label in task.metrics]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["bits"], str(row["seeds"])]
    for key, _ in task.metrics:
      digits = 5 if key.startswith("noise") else 3
      cells.append(_fmt(row[f"{key}_mean"], row[f"{key}_std"], digits))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _compare(row, ref, key):
  mean, ref_mean = row[f"{key}_mean"], ref[f"{key}_mean"]
  std, ref_std = row[f"{key}_std"], ref[f"{key}_std"]
  if mean is None or ref_mean is None:
    return None, None, None
  diff = mean - ref_mean
  if std is None or ref_std is None:
    return diff, None, None
  spread = math.sqrt(std**2 + ref_std**2)
  return diff, spread, abs(diff) > spread


def verdict(rows: Sequence[Dict], reference: str = "fp",
            task: SweepTask = CLASSIFICATION) -> List[str]:
  """Plain-language lines comparing each bit setting's gap with `reference`."""
  by_bits = {row["bits"]: row for row in rows}
  if reference not in by_bits:
    return [f"No `{reference}` run in the sweep: nothing to compare against."]
  ref = by_bits[reference]
  lines = []
  rise, noise = ref["val_loss_rise_mean"], ref["val_loss_rise_noise_mean"]
  if rise is not None:
    overfits = rise > 2 * noise
    lines.append(
        f"- {reference}: validation loss (moving average) ends {rise:.3f} "
        f"above its minimum, {'beyond' if overfits else 'within'} twice its "
        f"epoch-to-epoch noise ({2 * noise:.3f}): "
        f"{'it overfits' if overfits else 'no overfitting shown'}.")
  for row in rows:
    if row["bits"] == reference:
      continue
    parts = []
    for key, name, _ in task.gaps:
      diff, spread, beyond = _compare(row, ref, key)
      if diff is None:
        continue
      direction = "smaller" if diff < 0 else "larger"
      if spread is None:
        parts.append(f"{name} {diff:+.3f} vs {reference} (one seed: no "
                     "spread to judge against)")
      elif beyond:
        parts.append(f"{name} {diff:+.3f} vs {reference}, {direction} beyond "
                     f"the seed spread ({spread:.3f})")
      else:
        parts.append(f"{name} {diff:+.3f} vs {reference}, within the seed "
                     f"spread ({spread:.3f}): no difference shown")
    for key, name in (("val_loss_rise", "val loss rise"), task.quality):
      diff, spread, beyond = _compare(row, ref, key)
      if diff is not None:
        judged = ("" if spread is None else
                  (" (beyond spread)" if beyond else " (within spread)"))
        parts.append(f"{name} {diff:+.3f}{judged}")
    lines.append(f"- {row['bits']}: " + "; ".join(parts) + ".")
  return lines


def _bits_value(bits: str) -> float:
  """Weight bits of a default policy token, for plotting (fp -> 32)."""
  head = bits.split(",")[0]
  if head.startswith("w") and head[1:].split("a")[0].isdigit():
    return float(head[1:].split("a")[0])
  return 32.0


def _curve_plot(plt, records, bits_order, key, label, log, path) -> None:
  """`key` of history.csv per epoch, one line (mean ± std) per bit setting."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(bits_order), 1)))
  for color, bits in zip(colors, bits_order):
    curves = [[float(h.get(key, math.nan)) for h in r.history]
              for r in records if r.bits == bits and r.history]
    if not curves:
      continue
    length = min(len(c) for c in curves)
    curves = np.array([c[:length] for c in curves])
    epochs = np.arange(1, length + 1)
    mean = curves.mean(axis=0)
    ax.plot(epochs, mean, label=bits, color=color)
    if len(curves) > 1:
      std = curves.std(axis=0, ddof=1)
      # On a log axis mean − std can go below zero: floor the band at the
      # lowest seed's curve.
      lower = np.maximum(mean - std, curves.min(axis=0))
      ax.fill_between(epochs, lower, mean + std, color=color, alpha=0.2)
  ax.set_xlabel("epoch")
  if log:
    ax.set_yscale("log")  # early warm-up spikes would flatten the rest
  ax.set_ylabel(label)
  ax.set_title(f"{label[0].upper()}{label[1:]} per epoch "
               "(mean ± std over seeds)")
  ax.legend(title="bits")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plots(records, rows, bits_order, output_dir,
           task: SweepTask) -> List[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  paths = []
  for key, label, log in task.curves:
    paths.append(os.path.join(output_dir, f"{key}.png"))
    _curve_plot(plt, records, bits_order, key, label, log, paths[-1])

  labels = [r["bits"] for r in rows]
  fig, axes = plt.subplots(1, len(task.gaps), squeeze=False,
                           figsize=(5 * len(task.gaps), 4))
  for ax, (key, _, label) in zip(axes[0], task.gaps):
    means = [r[f"{key}_mean"] for r in rows]
    stds = [r[f"{key}_std"] or 0.0 for r in rows]
    ax.errorbar(range(len(labels)), means, yerr=stds, marker="o", capsize=4)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("bits")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  fig.suptitle("Generalization gap against bits (mean ± std over seeds)")
  paths.append(os.path.join(output_dir, "gap.png"))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  quantized = [r for r in rows if r["noise_std_mean"] is not None]
  fig, ax = plt.subplots(figsize=(6, 4))
  if quantized:
    qx = [_bits_value(r["bits"]) for r in quantized]
    ax.semilogy(qx, [r["noise_std_mean"] for r in quantized], "o-",
                label="measured std(δ)")
    ax.semilogy(qx, [r["noise_model_std_mean"] for r in quantized], "s--",
                label="model Δ/√12")
    ax.set_xticks(qx, [r["bits"] for r in quantized])
    ax.legend()
  ax.set_xlabel("bits")
  ax.set_ylabel("weight noise std (mean over layers)")
  ax.set_title("Weight-quantization noise against bits")
  ax.grid(alpha=0.3, which="both")
  paths.append(os.path.join(output_dir, "noise.png"))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths


def _csv_text(rows: Sequence[Dict]) -> str:
  out = io.StringIO()
  if rows:
    fieldnames = list(rows[0])
    for row in rows[1:]:
      fieldnames += [k for k in row if k not in fieldnames]
    writer = csv.DictWriter(out, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
  return out.getvalue()


def write_report(output_dir: str, records: Sequence[RunRecord],
                 bits_order: Sequence[str], *, title: str = "Bit-width sweep",
                 command: str = "", wall_time_s: Optional[float] = None,
                 task: SweepTask = CLASSIFICATION) -> Dict:
  """Writes runs.csv, results.csv, report.md and the PNGs; returns a summary.

  Returns:
    `{"rows": aggregated rows, "table": markdown, "verdict": lines,
    "paths": written files}`.
  """
  os.makedirs(output_dir, exist_ok=True)
  rows = aggregate(records, bits_order, task)
  table = markdown_table(rows, task)
  lines = verdict(rows, task=task)
  run_rows = []
  for r in records:
    run_row = {"bits": r.bits, "seed": r.seed}
    run_row.update({key: r.value(key) for key, _ in task.metrics})
    run_row["best_epoch"] = r.result.get("best_epoch")
    run_row["wall_time_s"] = r.result.get("wall_time_s")
    run_rows.append(run_row)
  atomic_write_text(os.path.join(output_dir, "runs.csv"), _csv_text(run_rows))
  atomic_write_text(os.path.join(output_dir, "results.csv"), _csv_text(rows))
  plots = _plots(records, rows, bits_order, output_dir, task)
  md = [f"# {title}", ""]
  if command:
    md += ["Command:", "", "```", command, "```", ""]
  if wall_time_s is not None:
    run_times = [r.result.get("wall_time_s") or 0.0 for r in records]
    md += [f"Wall time: {wall_time_s / 60:.1f} min for {len(records)} runs "
           f"(the runs' own wall times add up to {sum(run_times) / 60:.1f} "
           "min; runs finished earlier are not retrained).", ""]
  md += [task.legend, "", table, "",
         "## Verdict (computed from the numbers above)", "", *lines, "",
         "## Plots", ""]
  md += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
  atomic_write_text(os.path.join(output_dir, "report.md"), "\n".join(md) + "\n")
  return {"rows": rows, "table": table, "verdict": lines,
          "paths": [os.path.join(output_dir, n) for n in
                    ("report.md", "results.csv", "runs.csv")] + plots}
