"""Sensitivity rows as people read them: a table, a CSV and a heat map.

`kqreg.sensitivity` returns plain rows; these put them on screen
(`sensitivity_table`) and on disk (`write_sensitivity`: sensitivity.csv and
sensitivity.png, layers × bits).
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from kqreg.io_utils import atomic_write_text
from kqreg.mixed_precision.layer_sensitivity import SENSITIVITY_KEYS

__all__ = ["sensitivity_table", "write_sensitivity"]


def _grid(rows: Sequence[Dict[str, Any]], key: str
          ) -> Tuple[List[str], List[int], np.ndarray]:
  """(layers in row order, bits, values[layer, bits]) of one column."""
  layers = list(dict.fromkeys(r["layer"] for r in rows))
  bits = sorted({r["bits"] for r in rows})
  values = np.full((len(layers), len(bits)), np.nan)
  for r in rows:
    if r.get(key) is not None:
      values[layers.index(r["layer"]), bits.index(r["bits"])] = r[key]
  return layers, bits, values


def _fmt(value: float) -> str:
  return "-" if value is None or math.isnan(value) else f"{value:.2e}"


def sensitivity_table(rows: Sequence[Dict[str, Any]]) -> str:
  """The rows as printable text: one line per layer, one column per bits.

  The first block holds `measured` (‖y_q − y‖/‖y‖ at the model output),
  a second `loss_increase` when the rows have it.
  """
  if not rows:
    return "(no quantizable layers)"
  info = {r["layer"]: (r["layer_type"], r["params"]) for r in rows}
  blocks = [("measured", "‖y_q − y‖/‖y‖ at the model output, that layer "
                         "alone at b bits")]
  if any(r.get("loss_increase") is not None for r in rows):
    blocks.append(("loss_increase", "loss increase, that layer alone at b "
                                    "bits"))
  lines = []
  for key, title in blocks:
    layers, bits, values = _grid(rows, key)
    header = ["layer", "type", "params"] + [f"w{b}" for b in bits]
    table = [header] + [
        [name, info[name][0], f"{info[name][1]:,}"] +
        [_fmt(v) for v in values[i]] for i, name in enumerate(layers)]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    lines.append(title)
    for row in table:
      lines.append("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w)
                             for c, (cell, w) in enumerate(zip(row, widths))))
    lines.append("")
  return "\n".join(lines).rstrip()


def _csv_text(rows: Sequence[Dict[str, Any]]) -> str:
  buffer = io.StringIO()
  keys = list(SENSITIVITY_KEYS) + sorted(
      {k for r in rows for k in r} - set(SENSITIVITY_KEYS))
  writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
  writer.writeheader()
  for r in rows:
    writer.writerow({k: "" if r.get(k) is None else r[k] for k in keys})
  return buffer.getvalue()


def _symlog_ticks(linthresh: float, peak: float) -> List[float]:
  """Colour-bar ticks of a symlog scale: 0 and ±each decade in [linthresh, peak].

  Matplotlib's own symlog ticks also put decades below `linthresh` on the
  bar; the linear part squeezes them next to 0 and their labels overlap.
  Here neighbouring ticks are at least one decade apart (the linear half
  is one decade high). With no decade in range, ±peak is labelled instead.
  """
  low = math.ceil(math.log10(linthresh) - 1e-9)
  high = math.floor(math.log10(peak) + 1e-9)
  decades = [10.0 ** k for k in range(low, high + 1)] or [peak]
  return [-d for d in reversed(decades)] + [0.0] + decades


def _tick_label(value: float) -> str:
  if value == 0:
    return "0"
  exponent = math.log10(abs(value))
  if abs(exponent - round(exponent)) < 1e-9:
    return f"${'-' if value < 0 else ''}10^{{{int(round(exponent))}}}$"
  return f"{value:.1e}"


def _heat_map(ax, fig, layers, bits, values, title, label, symmetric):
  import matplotlib.colors as mcolors  # pylint: disable=g-import-not-at-top
  finite = values[np.isfinite(values)]
  if symmetric:
    # Loss increases can be negative: linear near 0, log beyond.
    peak = float(np.max(np.abs(finite))) if finite.size else 1.0
    small = finite[np.abs(finite) > 0]
    # At most three decades of log scale a side: below that, linear.
    linthresh = max(float(np.min(np.abs(small))) if small.size else 1.0,
                    peak * 1e-3)
    norm = mcolors.SymLogNorm(linthresh=linthresh, vmin=-peak, vmax=peak)
    cmap = "RdBu_r"
  else:
    positive = finite[finite > 0]
    low = float(positive.min()) if positive.size else 1e-6
    high = float(positive.max()) if positive.size else 1.0
    norm = mcolors.LogNorm(vmin=low, vmax=max(high, low * 10))
    cmap = "viridis"
  image = ax.imshow(np.where(values > 0, values, np.nan)
                    if not symmetric else values,
                    aspect="auto", cmap=cmap, norm=norm)
  ax.set_xticks(range(len(bits)), [f"w{b}" for b in bits])
  ax.set_yticks(range(len(layers)), layers,
                fontsize=8 if len(layers) <= 40 else 5)
  ax.set_xlabel("weight bits of that layer (all others float)")
  ax.set_title(title)
  if len(layers) <= 40:
    for i in range(len(layers)):
      for j in range(len(bits)):
        if np.isfinite(values[i, j]):
          # Dark text on the light end of either colour map.
          level = float(norm(values[i, j]))
          light = level > 0.7 or (symmetric and 0.3 < level < 0.7)
          ax.text(j, i, f"{values[i, j]:.1e}", ha="center", va="center",
                  fontsize=6, color="black" if light else "white")
  bar = fig.colorbar(image, ax=ax, label=label)
  if symmetric:
    ticks = _symlog_ticks(linthresh, peak)
    bar.set_ticks(ticks, labels=[_tick_label(t) for t in ticks])
    bar.ax.minorticks_off()


def write_sensitivity(rows: Sequence[Dict[str, Any]],
                      output_dir: str) -> Dict[str, str]:
  """Writes `sensitivity.csv` and `sensitivity.png` into `output_dir`.

  The CSV holds one line per row (`SENSITIVITY_KEYS`, empty for None). The
  PNG is a heat map, layers × bits, of `measured` on a log colour scale,
  with a second panel of `loss_increase` (symmetric log scale) when the
  rows have a non-zero one.

  Returns:
    {"csv": path, "png": path}.
  """
  os.makedirs(output_dir, exist_ok=True)
  csv_path = os.path.join(output_dir, "sensitivity.csv")
  png_path = os.path.join(output_dir, "sensitivity.png")
  atomic_write_text(csv_path, _csv_text(rows))
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only: no display on training machines
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = [("measured", "Output perturbation, one layer quantized",
             "‖y_q − y‖/‖y‖ (log scale)", False)]
  # An untrained model's loss may not move at all: no empty panel then.
  if any(r.get("loss_increase") for r in rows):
    panels.append(("loss_increase", "Loss increase, one layer quantized",
                   "loss(b bits) − loss(float)\n(symlog scale)", True))
  n_layers = len({r["layer"] for r in rows})
  fig, axes = plt.subplots(
      1, len(panels), squeeze=False,
      figsize=(4.5 * len(panels) + 2, max(3.0, 0.25 * n_layers + 1.5)))
  for ax, (key, title, label, symmetric) in zip(axes[0], panels):
    layers, bits, values = _grid(rows, key)
    _heat_map(ax, fig, layers, bits, values, title, label, symmetric)
  fig.tight_layout()
  # Save to a temporary name, then rename: a killed run leaves no half PNG.
  tmp = png_path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, png_path)
  return {"csv": csv_path, "png": png_path}
