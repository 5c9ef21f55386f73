"""The sweep report's tables: Markdown for report.md, CSV for the files.

Each takes what `kqreg.study.sweep.report` computed and the `SweepTask` that names
its metrics; none computes a statistic of its own.
"""

from __future__ import annotations

import csv
import io
import math
from typing import (TYPE_CHECKING, Dict, Mapping, Optional, Protocol, Sequence,
                    Tuple)

from kqreg.study.sweep import arms as arms_lib

if TYPE_CHECKING:
  from kqreg.study.sweep import overfitting as overfitting_lib
  from kqreg.study.sweep import paired as paired_lib
  from kqreg.study.sweep import statistics as stats_lib


class MetricNames(Protocol):
  """What a table needs of a `records.SweepTask`: its metric names."""
  metrics: Tuple[Tuple[str, str], ...]
  compared: Tuple[Tuple[str, str], ...]


__all__ = ["as_float", "csv_text", "markdown_table", "overfitting_table",
           "p_text", "paired_table", "r_text", "readings_table",
           "verdict_table"]


def _fmt(mean, std, digits=3):
  if mean is None:
    return "–"
  if std is None:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: Sequence[Dict], task: MetricNames) -> str:
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


def p_text(p: float) -> str:
  """A p-value as a report prints it."""
  if not math.isfinite(p):
    return "–"
  return "<0.001" if p < 0.001 else f"{p:.3f}"


def as_float(value) -> float:
  """`value` as a float, NaN where it is None or not a number."""
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def r_text(r: float) -> str:
  """A correlation as a report prints it."""
  return "–" if not math.isfinite(r) else f"{r:+.2f}"


def verdict_table(comparisons: Sequence["stats_lib.Comparison"],
                  task: MetricNames) -> str:
  """One Markdown row per (arm, reference, metric)."""
  names = dict(task.compared)
  lines = ["| arm | vs | metric | seeds | mean diff | 95% CI | p (Welch) | "
           "p (Holm) | significant | MDD (80%) |",
           "|" + "---|" * 10]
  for c in comparisons:
    level = round(100 * (1 - c.alpha))
    tested = math.isfinite(c.p)  # no spread: no interval, no MDD to give
    ci = f"{c.ci_low:+.3f} to {c.ci_high:+.3f}" if tested else "–"
    if level != 95:
      ci += f" ({level}%)"
    sig = ("–" if not math.isfinite(c.p) else
           (f"yes (α={c.alpha:g})" if c.significant else "no"))
    mdd = f"{c.mdd:.3f}" if tested else "–"
    diff = "–" if not math.isfinite(c.diff) else f"{c.diff:+.3f}"
    lines.append(f"| {c.arm} | {c.reference} | "
                 f"{names.get(c.metric, c.metric)} | {c.n}/{c.n_ref} | "
                 f"{diff} | {ci} | {p_text(c.p)} | {p_text(c.p_holm)} | {sig} | "
                 f"{mdd} |")
  return "\n".join(lines)


def overfitting_table(
    overfit: Dict[str, "overfitting_lib.ArmOverfitting"],
    rates: Optional[Dict[str, float]] = None) -> str:
  """One Markdown row per arm: rise, noise, null threshold, seeds, p.

  ρ̂ is the arm's pooled noise correlation, the null's ρ its upper bound
  (`overfitting.rho_upper_bound`). With `rates` (arm -> the test's measured
  false-positive rate at the arm's ρ̂, epochs and seeds) a column prints
  them.
  """
  rate_head = " measured false-positive rate |" if rates is not None else ""
  lines = ["| arm | seeds | val loss rise | epoch noise σ̂ | noise ρ̂ (null's ρ) | "
           "null threshold | seeds firing | p (Stouffer) | p (Holm) | "
           "overfits |" + rate_head,
           "|" + "---|" * (10 + (rates is not None))]
  for v in overfit.values():
    rate = ""
    if rates is not None:
      r = rates.get(v.arm)
      rate = f" {r:.3f} |" if r is not None else " – |"
    lines.append(f"| {v.arm} | {v.seeds} | {v.rise_mean:.4f} | "
                 f"{v.noise_mean:.4f} | {v.rho_estimate:.2f} ({v.rho:.2f}) | "
                 f"{v.threshold_mean:.4f} | "
                 f"{v.fired}/{v.seeds} | {p_text(v.p)} | {p_text(v.p_holm)} | "
                 f"{'yes' if v.overfits else 'no'} |" + rate)
  return "\n".join(lines)


def csv_text(rows: Sequence[Dict]) -> str:
  """Dict rows as CSV text; columns in first-seen order over all rows."""
  out = io.StringIO()
  if rows:
    fieldnames = list(rows[0])
    for row in rows[1:]:
      fieldnames += [k for k in row if k not in fieldnames]
    writer = csv.DictWriter(out, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
  return out.getvalue()


def paired_table(comparisons: Sequence["paired_lib.PairedComparison"],
                 names: Mapping[str, str]) -> str:
  """One Markdown row per (arm, reference, metric), paired by seed."""
  lines = ["| arm | vs | metric | pairs | mean diff | simultaneous CI | "
           "p (paired t) | p (Holm) | p (sign-flip) | r (pairs) | margin | "
           "p (TOST) | reading |", "|" + "---|" * 13]
  for c in comparisons:
    tested = math.isfinite(c.p)
    ci = f"{c.ci_low:+.3f} to {c.ci_high:+.3f}" if tested else "–"
    diff = f"{c.diff:+.3f}" if math.isfinite(c.diff) else "–"
    flip = p_text(c.p_sign_flip)
    if c.sign_flip_method == "monte carlo":
      flip += " (MC)"
    lines.append(
        f"| {c.arm} | {c.reference} | {names.get(c.metric, c.metric)} | "
        f"{c.n} | {diff} | {ci} | {p_text(c.p)} | {p_text(c.p_holm)} | {flip} | "
        f"{r_text(c.correlation)} | {'±%g' % c.margin if c.margin else '–'} | "
        f"{p_text(c.p_tost)} | {c.reading} |")
  return "\n".join(lines)


def readings_table(comparisons: Sequence["paired_lib.PairedComparison"],
                   names: Mapping[str, str],
                   reference: str = arms_lib.REFERENCE) -> str:
  """Arm (or twin vs arm) × metric: the reading of each comparison."""
  metrics = list(dict.fromkeys(c.metric for c in comparisons))
  rows: Dict[Tuple[str, str], Dict[str, str]] = {}
  for c in comparisons:
    rows.setdefault((c.arm, c.reference), {})[c.metric] = c.reading
  lines = ["| arm | " + " | ".join(names.get(m, m) for m in metrics) + " |",
           "|" + "---|" * (len(metrics) + 1)]
  for (arm, ref), cells in rows.items():
    label = arm if ref == reference else f"{arm} vs {ref}"
    lines.append(f"| {label} | " +
                 " | ".join(cells.get(m, "–") for m in metrics) + " |")
  return "\n".join(lines)
