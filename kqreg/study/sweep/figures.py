"""Figures of a sweep report (matplotlib, Agg backend, PNG).

  <key>.png    a history key per epoch, one curve per arm (mean over seeds)
               with the seeds' min–max band; noise twins dashed in their
               quantized arm's colour (val_loss.png is QReg's Figure 1)
  gap.png      generalization gap of every run against its measured std(δ)
               (fp at 0)
  noise.png    measured std(δ) and the Δ/√12 model against weight bits

Records are duck-typed: `bits`, `history` (list of dicts), `curve(key)`,
`value(key)` (`kqreg.study.sweep.records.RunRecord`).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from kqreg.study.sweep import arms as arms_lib
from kqreg.study.sweep.tables import as_float, p_text

if TYPE_CHECKING:
  from kqreg.study.sweep import decision

__all__ = ["arm_styles", "curve_figure", "dose_response_figure", "gap_figure",
           "noise_figure", "panel_grid", "write_figures"]


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only: no display on training machines
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def panel_grid(panels: int, width: float, height: float):
  """(pyplot, figure, axes) of `panels` panels, at most two a row.

  Four panels in one row shrink the labels below what a documentation page
  (about 800 px wide) shows legibly; unused cells are hidden.
  """
  plt = _pyplot()
  columns = min(2, max(1, panels))
  rows = max(1, math.ceil(panels / columns))
  fig, axes = plt.subplots(rows, columns, squeeze=False,
                           figsize=(width * columns, height * rows))
  for ax in axes.flat[panels:]:
    ax.set_visible(False)
  return plt, fig, axes


def arm_styles(arms: Sequence[str]) -> Dict[str, Tuple[object, str, bool]]:
  """arm -> (colour, line style, filled marker).

  fp is black; every other arm gets its own colour, except that a noise
  twin takes its quantized arm's colour, dashed and hollow, so the two read
  as a pair.
  """
  plt = _pyplot()
  palette = plt.get_cmap("tab10").colors
  styles, used = {}, 0
  for arm in arms:
    if arms_lib.quantized_partner(arm, arms) is None:
      if arm == arms_lib.REFERENCE:
        color = "black"
      else:
        color, used = palette[used % len(palette)], used + 1
      styles[arm] = (color, "--" if arms_lib.is_noise_twin(arm) else "-",
                     not arms_lib.is_noise_twin(arm))
  for arm in arms:
    partner = arms_lib.quantized_partner(arm, arms)
    if partner is not None:
      styles[arm] = (styles[partner][0], "--", False)
  return styles


def curve_figure(records, arms: Sequence[str], key: str, label: str,
                 log: bool, path: str) -> None:
  """`key` per epoch: mean over seeds per arm, band from min to max."""
  plt = _pyplot()
  styles = arm_styles(arms)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for arm in arms:
    curves = [r.curve(key) for r in records if r.bits == arm and r.history]
    if not curves:
      continue
    length = min(len(c) for c in curves)
    curves = np.array([c[:length] for c in curves])
    epochs = np.arange(1, length + 1)
    color, style, _ = styles[arm]
    ax.plot(epochs, np.nanmean(curves, axis=0), style, color=color,
            label=f"{arm} ({len(curves)})")
    if len(curves) > 1:
      # Min–max, not ± sd: with 2–5 seeds an sd band says little, and on a
      # log axis mean − sd can fall below zero.
      ax.fill_between(epochs, np.nanmin(curves, axis=0),
                      np.nanmax(curves, axis=0), color=color,
                      alpha=0.08 if style == "--" else 0.15, linewidth=0)
  ax.set_xlabel("epoch")
  if log:
    ax.set_yscale("log")  # early warm-up spikes would flatten the rest
  ax.set_ylabel(label)
  ax.set_title(f"{label[0].upper()}{label[1:]} per epoch "
               "(mean over seeds; band: min–max)")
  ax.legend(title="bits (seeds)", fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def gap_figure(records, arms: Sequence[str],
               gaps: Sequence[Tuple[str, str, str]], path: str) -> None:
  """One point per run: its gap (per `gaps` entry) against its std(δ).

  std(δ) is the run's measured weight-noise std (mean over quantized
  layers); fp runs sit at 0. The x axis is linear near 0 and logarithmic
  above the smallest measured std, so fp, 8-bit and 2-bit all show.
  """
  plt = _pyplot()
  styles = arm_styles(arms)
  fig, axes = plt.subplots(1, len(gaps), squeeze=False,
                           figsize=(5.5 * len(gaps), 4.2))
  positive = [r.value("noise_std") for r in records
              if (r.value("noise_std") or 0) > 0]
  for ax, (key, _, label) in zip(axes[0], gaps):
    for arm in arms:
      points = []
      for r in records:
        if r.bits != arm or r.value(key) is None:
          continue
        std = r.value("noise_std")
        if std is None and arm == arms_lib.REFERENCE:
          std = 0.0
        if std is not None:
          points.append((std, r.value(key)))
      if not points:
        continue
      color, _, filled = styles[arm]
      x, y = zip(*points)
      ax.scatter(x, y, s=36, label=arm, edgecolors=color, linewidths=1.5,
                 facecolors=color if filled else "none")
    if positive:
      ax.set_xscale("symlog", linthresh=min(positive) / 2)
      # Room on both sides, and a decade tick beyond the noisiest arm.
      ax.set_xlim(-min(positive) / 4, max(positive) * 3)
    ax.set_xlabel("std(δ), measured weight noise (fp = 0)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")
  axes[0][0].legend(title="bits", fontsize=8)
  fig.suptitle("Generalization gap against weight noise (one point per run)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def noise_figure(rows: Sequence[Dict], path: str) -> None:
  """Per arm: mean measured std(δ) and the Δ/√12 model against bits (log)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for twin, marker, line in ((False, "o", "-"), (True, "^", ":")):
    arms = [r for r in rows if r["noise_std_mean"] is not None
            and arms_lib.weight_bits(r["bits"]) is not None
            and arms_lib.is_noise_twin(r["bits"]) == twin]
    if not arms:
      continue
    x = [arms_lib.weight_bits(r["bits"]) for r in arms]
    name = "noise twins" if twin else "quantized"
    ax.semilogy(x, [r["noise_std_mean"] for r in arms], marker + line,
                label=f"measured std(δ), {name}")
    if not twin:
      ax.semilogy(x, [r["noise_model_std_mean"] or math.nan for r in arms],
                  "s--", label="model Δ/√12")
  ax.set_xlabel("weight bits")
  ax.set_ylabel("weight noise std (mean over layers)")
  ax.set_title("Weight noise against bits")
  ax.grid(alpha=0.3, which="both")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_figures(output_dir: str, records, rows: Sequence[Dict],
                  arms: Sequence[str], task) -> List[str]:
  """The task's curve PNGs, gap.png and noise.png; returns their paths."""
  paths = []
  for key, label, log in task.curves:
    paths.append(os.path.join(output_dir, f"{key}.png"))
    curve_figure(records, arms, key, label, log, paths[-1])
  paths.append(os.path.join(output_dir, "gap.png"))
  gap_figure(records, arms, task.gaps, paths[-1])
  paths.append(os.path.join(output_dir, "noise.png"))
  noise_figure(rows, paths[-1])
  return paths


def dose_response_figure(doses: Sequence["decision.DoseResponse"],
                         names: Mapping[str, str], path: str) -> None:
  """Effect and interval against std(δ): quantizers solid, twins hollow.

  One panel per metric, from its "quantizers and twins" fit when there is
  one (else its "quantizers" fit); the dashed line is the WLS fit, the
  title gives the per-seed trend's slope, interval and p.
  """
  panels: Dict[str, "decision.DoseResponse"] = {}
  for d in doses:
    if d.metric not in panels or d.family != "quantizers":
      panels[d.metric] = d
  primary = {d.metric: d for d in doses if d.family == "quantizers"}
  plt, fig, axes = panel_grid(len(panels), 5.2, 4.2)
  for ax, (metric, d) in zip(axes.flat, panels.items()):
    for arm, x, y, lo, hi in zip(d.arms, d.noise, d.effects, d.ci_low,
                                 d.ci_high):
      twin = arms_lib.is_noise_twin(arm)
      yerr = ([[max(0.0, y - lo)], [max(0.0, hi - y)]]
              if math.isfinite(lo) and math.isfinite(hi) else None)
      ax.errorbar([x], [y], yerr=yerr, fmt="^" if twin else "o",
                  color="tab:blue" if not twin else "tab:orange",
                  mfc="none" if twin else "tab:blue",
                  linestyle=":" if twin else "-", capsize=3)
      ax.annotate(arm, (x, y), textcoords="offset points", xytext=(4, 4),
                  fontsize=7)
    if math.isfinite(as_float(d.wls.slope)):
      xs = np.geomspace(min(d.noise), max(d.noise), 20)
      ax.plot(xs, as_float(d.wls.intercept) + as_float(d.wls.slope) * np.log(xs),
              "--", color="gray", linewidth=1, label="WLS fit")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("std(δ), measured weight noise (log)")
    ax.set_ylabel(f"{names.get(metric, metric)}: arm − fp (paired)")
    t = primary.get(metric, d).trend
    ax.set_title(f"{names.get(metric, metric)}\nper-seed slope "
                 f"{as_float(t.slope):+.3f} [{as_float(t.ci_low):+.3f}, "
                 f"{as_float(t.ci_high):+.3f}], p {p_text(as_float(t.p))}",
                 fontsize=8)
    ax.grid(alpha=0.3, which="both")
  axes[0][0].plot([], [], "o-", color="tab:blue", label="quantizer (solid)")
  axes[0][0].plot([], [], "^:", color="tab:orange", mfc="none",
                  label="noise twin (hollow)")
  axes[0][0].legend(fontsize=7)
  fig.suptitle("Dose-response: paired effect against weight noise "
               "(bars: Holm-compatible simultaneous intervals)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)

