"""Several finished sweeps side by side: does an arm do the same everywhere?

Each sweep (one setting: a model, a dataset, a training recipe) writes its
paired readings to `comparisons.csv`: per arm and metric, the mean paired
difference against the reference, the Holm-compatible simultaneous interval
and the reading. `cross_setting_rows` lines them up; `pooled_effects`
combines one arm's effect over the settings where it was run:

* random effects (DerSimonian–Laird τ²) with the Hartung–Knapp interval
  (t on k − 1 degrees of freedom, its variance never below the plain
  random-effects one). The settings are different models and
  data, so a common effect is not assumed; with two or three settings the
  interval is wide, and that width is what pooling so few settings can say;
* Cochran's Q and I², so a reader sees when the settings disagree;
* Holm over the arms of a metric, with intervals compatible with it
  (`paired.holm_intervals`), as within a sweep.

`write_cross_setting` writes cross_setting.csv, cross_setting.md and
cross_setting.png (one panel per metric, one marker per setting).
Plain NumPy/SciPy: it reads CSVs, not runs.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from kqreg.io_utils import atomic_write_text
from kqreg.study.sweep import arms as arms_lib
from kqreg.study.sweep.paired import holm_intervals
from kqreg.study.sweep.paired_tests import ALPHA
from kqreg.study.sweep.records import TASKS
from kqreg.study.sweep.tables import as_float, csv_text, p_text

__all__ = ["SettingEffect", "read_setting", "cross_setting_rows",
           "PooledEffect", "pooled_effects", "cross_setting_table",
           "cross_setting_figure", "write_cross_setting"]

# The names the sweeps' own reports give the metrics they compare.
METRIC_NAMES = {key: name for task in TASKS.values()
                for key, name in task.compared}


@dataclasses.dataclass(frozen=True)
class SettingEffect:
  """One arm against its reference in one metric of one setting."""
  setting: str
  arm: str
  reference: str
  metric: str
  n: int
  diff: float
  se: float
  ci_low: float
  ci_high: float
  p_holm: float
  reading: str

  def as_dict(self) -> Dict:
    return dataclasses.asdict(self)


def read_setting(output_dir: str) -> Tuple[str, List[Dict]]:
  """(title, comparisons.csv rows) of a finished sweep's folder.

  Raises:
    FileNotFoundError: the folder has no comparisons.csv (not a finished
      sweep, or one written before paired analysis): rerun `kqreg-sweep`
      with the same flags to write it from the runs.
  """
  path = os.path.join(output_dir, "comparisons.csv")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{output_dir}: no comparisons.csv. Give the --output_dir of a "
        "finished kqreg-sweep (rerunning it writes the report from its "
        "finished runs).")
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  title = os.path.basename(os.path.normpath(output_dir))
  report = os.path.join(output_dir, "report.md")
  if os.path.isfile(report):
    with open(report, encoding="utf-8") as f:
      first = f.readline().strip()
    if first.startswith("# "):
      title = first[2:]
  return title, rows


def cross_setting_rows(settings: Mapping[str, Sequence[Dict]],
                       metrics: Optional[Sequence[str]] = None
                       ) -> List[SettingEffect]:
  """Every (setting, arm, metric) effect, in the settings' order.

  Args:
    settings: setting name -> its comparisons.csv rows (`read_setting`).
    metrics: metric keys to keep (default: all).
  """
  out = []
  for name, rows in settings.items():
    for row in rows:
      if metrics and row["metric"] not in metrics:
        continue
      n = int(float(row["n"]))
      sd = as_float(row["sd"])
      out.append(SettingEffect(
          name, row["arm"], row["reference"], row["metric"], n,
          as_float(row["diff"]), sd / math.sqrt(n) if n > 0 else math.nan,
          as_float(row["ci_low"]), as_float(row["ci_high"]),
          as_float(row["p_holm"]), row["reading"]))
  return out


@dataclasses.dataclass(frozen=True)
class PooledEffect:
  """One arm's effect pooled over settings (random effects, Hartung–Knapp).

  Attributes:
    arm, reference, metric: what was pooled.
    settings: the settings pooled (k of them).
    diff: the random-effects estimate.
    se, df: its Hartung–Knapp standard error and k − 1.
    tau2: the between-setting variance (DerSimonian–Laird).
    q, q_p: Cochran's Q and its p (k − 1 df): do the settings disagree?
    i2: I², the share of the spread that is between settings.
    ci_low, ci_high: Holm-compatible simultaneous interval over the arms of
      the metric.
    p, p_holm: the pooled t-test and its Holm adjustment over those arms.
    reading: "differs (higher|lower)" or "inconclusive" (no margin is
      declared across settings, so never "equivalent").
  """
  arm: str
  reference: str
  metric: str
  settings: Tuple[str, ...]
  diff: float
  se: float
  df: float
  tau2: float
  q: float
  q_p: float
  i2: float
  ci_low: float
  ci_high: float
  p: float
  p_holm: float
  reading: str

  def as_dict(self) -> Dict:
    return dataclasses.asdict(self)


def _random_effects(d: np.ndarray, se: np.ndarray):
  """(estimate, Hartung–Knapp se, τ², Q, I²) of effects d with se."""
  w = 1.0 / se**2
  fixed = float(np.sum(w * d) / np.sum(w))
  q = float(np.sum(w * (d - fixed)**2))
  k = len(d)
  c = float(np.sum(w) - np.sum(w**2) / np.sum(w))
  tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
  w_star = 1.0 / (se**2 + tau2)
  mu = float(np.sum(w_star * d) / np.sum(w_star))
  # Hartung–Knapp: the weighted spread around mu, on k − 1 df, floored at
  # the plain random-effects variance (Röver et al. 2015's modification):
  # unfloored, settings that happen to agree would get a zero-width interval.
  hk = float(np.sum(w_star * (d - mu)**2) / ((k - 1) * np.sum(w_star)))
  hk = max(hk, 1.0 / float(np.sum(w_star)))
  i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
  return mu, math.sqrt(hk), tau2, q, i2


def pooled_effects(effects: Sequence[SettingEffect], alpha: float = ALPHA
                   ) -> List[PooledEffect]:
  """Pools each (arm, reference, metric) over the settings that ran it.

  Only effects present in at least two settings with a finite, positive se
  are pooled. Holm's family is the pooled arms of one metric.
  """
  groups: Dict[Tuple[str, str, str], List[SettingEffect]] = {}
  for e in effects:
    if math.isfinite(e.diff) and math.isfinite(e.se) and e.se > 0:
      groups.setdefault((e.arm, e.reference, e.metric), []).append(e)
  pooled = {key: group for key, group in groups.items() if len(group) >= 2}
  fits = {}
  for key, group in pooled.items():
    d = np.array([e.diff for e in group])
    se = np.array([e.se for e in group])
    fits[key] = _random_effects(d, se)
  out = []
  for metric in dict.fromkeys(key[2] for key in pooled):
    keys = [key for key in pooled if key[2] == metric]
    diff = [fits[key][0] for key in keys]
    se = [fits[key][1] for key in keys]
    df = [len(pooled[key]) - 1 for key in keys]
    holm = holm_intervals(diff, se, df, alpha)
    for i, key in enumerate(keys):
      mu, hk_se, tau2, q, i2 = fits[key]
      k = len(pooled[key])
      rejected = bool(holm.rejected[i])
      out.append(PooledEffect(
          key[0], key[1], metric, tuple(e.setting for e in pooled[key]), mu,
          hk_se, float(k - 1), tau2, q, float(stats.chi2.sf(q, k - 1)), i2,
          float(holm.low[i]), float(holm.high[i]), float(holm.p[i]),
          float(holm.p_holm[i]),
          ("differs (higher)" if mu > 0 else "differs (lower)") if rejected
          else "inconclusive"))
  return out


def _row_name(effect) -> str:
  """"w4" against fp, "n4 vs w4" against another arm."""
  if effect.reference == arms_lib.REFERENCE:
    return effect.arm
  return f"{effect.arm} vs {effect.reference}"


def _interval(low: float, high: float) -> str:
  if not (math.isfinite(low) and math.isfinite(high)):
    return "–"
  return f"[{low:+.3f}, {high:+.3f}]"


def cross_setting_table(effects: Sequence[SettingEffect],
                        pooled: Sequence[PooledEffect]) -> str:
  """Markdown: one row per (arm, metric), one column per setting, pooled."""
  settings = list(dict.fromkeys(e.setting for e in effects))
  cells: Dict[Tuple[str, str, str], Dict[str, SettingEffect]] = {}
  for e in effects:
    cells.setdefault((e.arm, e.reference, e.metric), {})[e.setting] = e
  # Grouped by metric, arms in first-seen order (a setting's own arms, such
  # as its control, next to the others').
  metric_order = list(dict.fromkeys(e.metric for e in effects))
  arm_order = list(dict.fromkeys((e.arm, e.reference) for e in effects))
  cells = dict(sorted(cells.items(), key=lambda item: (
      metric_order.index(item[0][2]),
      arm_order.index((item[0][0], item[0][1])))))
  by_key = {(p.arm, p.reference, p.metric): p for p in pooled}
  head = ["arm", "metric", *settings, "pooled (random effects)"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for key, row in cells.items():
    metric = key[2]
    name = _row_name(next(iter(row.values())))
    values = []
    for setting in settings:
      e = row.get(setting)
      values.append("–" if e is None else
                    f"{e.diff:+.3f} {_interval(e.ci_low, e.ci_high)}: "
                    f"{e.reading}")
    p = by_key.get(key)
    values.append("–" if p is None else
                  f"{p.diff:+.3f} {_interval(p.ci_low, p.ci_high)}: "
                  f"{p.reading} (Holm p {p_text(p.p_holm)}; I² "
                  f"{100 * p.i2:.0f}%, Q p {p_text(p.q_p)})")
    lines.append("| " + " | ".join([name, METRIC_NAMES.get(metric, metric),
                                    *values]) + " |")
  return "\n".join(lines)


def cross_setting_figure(effects: Sequence[SettingEffect],
                         pooled: Sequence[PooledEffect], path: str) -> None:
  """Per metric: each arm's paired effect and interval, one marker a setting.

  Quantized arms filled, noise twins hollow; the pooled estimate a black
  diamond with its interval, which may run off the axis (the axis spans the
  settings' own intervals).
  """
  from kqreg.study.sweep.figures import panel_grid  # pylint: disable=g-import-not-at-top
  metrics = list(dict.fromkeys(e.metric for e in effects))
  settings = list(dict.fromkeys(e.setting for e in effects))
  plt, fig, axes = panel_grid(len(metrics), 5.6, 4.6)
  palette = plt.get_cmap("tab10").colors
  offsets = np.linspace(-0.25, 0.25, len(settings) + 1)
  for ax, metric in zip(axes.flat, metrics):
    names = list(dict.fromkeys(_row_name(e) for e in effects
                               if e.metric == metric))
    position = {n: i for i, n in enumerate(names)}
    for e in effects:
      if e.metric != metric:
        continue
      name = _row_name(e)
      s = settings.index(e.setting)
      y = position[name] + offsets[s]
      twin = arms_lib.is_noise_twin(e.arm)
      color = palette[s % len(palette)]
      xerr = ([[max(0.0, e.diff - e.ci_low)], [max(0.0, e.ci_high - e.diff)]]
              if math.isfinite(e.ci_low) and math.isfinite(e.ci_high)
              else None)
      ax.errorbar([e.diff], [y], xerr=xerr, fmt="o", color=color,
                  mfc="none" if twin else color, capsize=2,
                  label=e.setting if position[name] == 0 else None)
    for p in pooled:
      if p.metric != metric:
        continue
      name = _row_name(p)
      y = position[name] + offsets[-1]
      xerr = ([[max(0.0, p.diff - p.ci_low)], [max(0.0, p.ci_high - p.diff)]]
              if math.isfinite(p.ci_low) and math.isfinite(p.ci_high)
              else None)
      ax.errorbar([p.diff], [y], xerr=xerr, fmt="D", color="black",
                  ecolor="gray", elinewidth=0.8, capsize=2,
                  label="pooled" if position[name] == 0 else None)
    # The axis spans the settings' intervals: a pooled interval over two or
    # three settings can be ten times wider and would flatten them; its
    # bar runs off the axis instead (its numbers are in the table).
    ends = [v for e in effects if e.metric == metric
            for v in (e.ci_low, e.ci_high, e.diff) if math.isfinite(v)]
    if ends:
      low, high = min(ends + [0.0]), max(ends + [0.0])
      pad = 0.1 * (high - low or 1.0)
      ax.set_xlim(low - pad, high + pad)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{METRIC_NAMES.get(metric, metric)}: arm − reference "
                  "(paired)")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=6, loc="best")
  fig.suptitle("Paired effects by setting (bars: Holm-compatible "
               "simultaneous intervals; hollow: noise twins)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_cross_setting(output_dir: str, sweeps: Sequence[str],
                        names: Optional[Sequence[str]] = None,
                        metrics: Optional[Sequence[str]] = None,
                        alpha: float = ALPHA) -> Dict:
  """Reads finished sweeps, writes the cross-setting CSVs, table and figure.

  Args:
    output_dir: folder for cross_setting.md, cross_setting.csv,
      cross_setting_pooled.csv and cross_setting.png (created).
    sweeps: the sweeps' output folders, one setting each.
    names: a short name per setting (default: each report's title).
    metrics: metric keys to keep (default: all).
    alpha: family-wise level of the pooled tests.

  Returns:
    {"effects": [SettingEffect.as_dict()], "pooled": [PooledEffect.as_dict()],
    "table": markdown, "paths": written files}.

  Raises:
    ValueError: fewer than two sweeps, or names that do not match them.
  """
  if len(sweeps) < 2:
    raise ValueError("give at least two sweeps' folders to set side by "
                     f"side (got {len(sweeps)}).")
  if names is not None and len(names) != len(sweeps):
    raise ValueError(f"{len(names)} names for {len(sweeps)} sweeps: give "
                     "one name per sweep.")
  settings: Dict[str, List[Dict]] = {}
  for i, folder in enumerate(sweeps):
    title, rows = read_setting(folder)
    name = names[i] if names else title
    if name in settings:
      raise ValueError(f"two sweeps are named {name!r}: name them apart.")
    settings[name] = rows
  effects = cross_setting_rows(settings, metrics)
  pooled = pooled_effects(effects, alpha)
  table = cross_setting_table(effects, pooled)
  os.makedirs(output_dir, exist_ok=True)
  paths = [os.path.join(output_dir, n) for n in
           ("cross_setting.md", "cross_setting.csv",
            "cross_setting_pooled.csv", "cross_setting.png")]
  md = ["# Paired effects across settings", "",
        "Each cell: the setting's mean paired difference (arm − reference, "
        "by seed), its Holm-compatible simultaneous interval and its "
        f"reading, from its own report (α = {alpha:g} within each "
        "setting). Pooled: random effects (DerSimonian–Laird τ²) with the "
        "Hartung–Knapp interval on k − 1 degrees of freedom (never narrower "
        "than the plain random-effects one), Holm over the "
        "arms of a metric with compatible intervals; the settings differ "
        "in model and data, so no common effect is assumed, and with two "
        "or three settings the pooled interval is wide. I² and Cochran's Q "
        "say whether the settings disagree.", "",
        "Settings: " + "; ".join(f"{n} ({f})" for n, f in
                                 zip(settings, sweeps)), "",
        table, "", "![cross_setting.png](cross_setting.png)"]
  atomic_write_text(paths[0], "\n".join(md) + "\n")
  atomic_write_text(paths[1], csv_text([e.as_dict() for e in effects]))
  atomic_write_text(paths[2], csv_text([p.as_dict() for p in pooled]))
  cross_setting_figure(effects, pooled, paths[3])
  return {"effects": [e.as_dict() for e in effects],
          "pooled": [p.as_dict() for p in pooled], "table": table,
          "paths": paths}
