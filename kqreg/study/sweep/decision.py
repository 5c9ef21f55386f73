"""The sweep's decision: seed-paired comparisons, readings, dose-response.

`kqreg.study.sweep.paired` holds the statistics; this module applies them
to a sweep's `RunRecord`s and says what they decide:

* `paired_comparisons`: every arm against `fp` and every noise twin against
  its quantized arm, paired by seed (seed s of every arm shares initial
  weights, label-noise indices and batch order), one Holm family per
  metric; each comparison carries the paired t-test, the exact sign-flip
  test as its check, the pairing's correlation, TOST within the declared
  margin and one of four readings (`paired.reading`).
* `unpaired_pairs`: the pairs whose arms share fewer than 2 seeds; only
  those keep Welch's two-sample test (`statistics.compare_arms`).
* `dose_responses`: the paired effect against log std(δ), the measured
  weight noise, over the quantized arms (and over quantizers with their
  twins): the per-seed trend test (`dose_response.per_seed_trend`, primary) and
  the WLS fit of the arms' mean effects (`dose_response.dose_response`).
* `positive_controls`: arms that change a setting other than bits
  (`fp+weight_decay=0.01`) against `fp`: does the instrument detect an
  established regularizer on the same seeds with the same analysis?
* `parse_margins`: `--equivalence_margins` ("val_accuracy:0.02,...").

Plain NumPy/SciPy; its tables are in `tables`, its figure in `figures`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from kqreg.study.sweep import arms as arms_lib
from kqreg.study.sweep import dose_response as dose_lib
from kqreg.study.sweep import paired as paired_lib
from kqreg.study.sweep import paired_tests
from kqreg.study.sweep.tables import as_float, p_text, r_text

__all__ = ["PRIMARY_METRIC", "parse_margins", "values_by_seed",
           "paired_comparisons", "unpaired_pairs", "DoseResponse",
           "dose_responses", "positive_controls",
           "comparison_phrase",
           "dose_response_lines", "positive_control_lines"]

# The metric the positive control and the headline dose-response are read
# in: the final validation loss, the figure QReg's claim is about.
PRIMARY_METRIC = "val_loss"


def parse_margins(text: Optional[str],
                  allowed: Optional[Sequence[str]] = None
                  ) -> Dict[str, float]:
  """"val_accuracy:0.02,val_loss:0.05" -> {"val_accuracy": 0.02, ...}.

  Raises ValueError for a malformed entry, a margin that is not positive,
  a repeated metric, or (with `allowed`) a metric the report does not
  compare.
  """
  out: Dict[str, float] = {}
  for entry in (text or "").replace(";", ",").split(","):
    entry = entry.strip()
    if not entry:
      continue
    key, sep, value = entry.partition(":")
    key = key.strip()
    try:
      margin = float(value) if sep else math.nan
    except ValueError:
      margin = math.nan
    if not key or not math.isfinite(margin) or margin <= 0:
      raise ValueError(f"equivalence margin {entry!r}: write metric:margin "
                       "with a positive margin, e.g. val_loss:0.05.")
    if key in out:
      raise ValueError(f"equivalence margin for {key!r} given twice.")
    if allowed is not None and key not in allowed:
      raise ValueError(f"equivalence margin for {key!r}: the report compares "
                       f"{', '.join(allowed)} only.")
    out[key] = margin
  return out


def values_by_seed(records, arms: Sequence[str],
                   key: str) -> Dict[str, Dict[int, Optional[float]]]:
  """arm -> {seed: value of `key`} (a seed's later record wins)."""
  out: Dict[str, Dict[int, Optional[float]]] = {arm: {} for arm in arms}
  for r in records:
    if r.bits in out:
      out[r.bits][int(r.seed)] = r.value(key)
  return out


def _seeds(records, arm: str) -> set:
  return {int(r.seed) for r in records if r.bits == arm}


def unpaired_pairs(records, pairs: Sequence[Tuple[str, str]]
                   ) -> List[Tuple[str, str]]:
  """Pairs run on other seeds that share fewer than 2: Welch stays only there.

  Pairs that share 2 or more seeds are compared paired on the shared ones
  (`PairedComparison.dropped` names the others); pairs on the same seeds
  stay paired whatever their number (one seed: not tested).
  """
  return [(a, b) for a, b in pairs
          if _seeds(records, a) != _seeds(records, b)
          and len(_seeds(records, a) & _seeds(records, b)) < 2]


def paired_comparisons(records, arms: Sequence[str],
                       compared: Sequence[Tuple[str, str]],
                       reference: str = arms_lib.REFERENCE,
                       margins: Optional[Mapping[str, float]] = None,
                       alpha: float = paired_tests.ALPHA
                       ) -> List[paired_lib.PairedComparison]:
  """Per metric of `compared`, `paired.compare_paired` over the sweep's pairs.

  The pairs are `arms.comparison_pairs(arms, reference)`; each metric is
  one Holm family; `margins[metric]` (if declared) is its equivalence
  margin. Metric-major order.
  """
  pairs = arms_lib.comparison_pairs(arms, reference)
  out: List[paired_lib.PairedComparison] = []
  for key, _ in compared:
    values = values_by_seed(records, arms, key)
    out += paired_lib.compare_paired(values, pairs, key,
                                     (margins or {}).get(key), alpha)
  return out


# --------------------------------------------------------------------------
# Dose-response
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DoseResponse:
  """The paired effect of one metric against log std(δ) over some arms.

  Attributes:
    metric: the metric's key.
    family: "quantizers" (w arms) or "quantizers and twins".
    arms: the arms fitted, in report order.
    noise: mean measured std(δ) per arm (NaN if unmeasured).
    effects, ci_low, ci_high: each arm's paired effect against the
      reference and its Holm-compatible interval (as in the report).
    trend: `dose_response.per_seed_trend` (primary): per-seed slopes t-tested.
    wls: `dose_response.dose_response`: WLS slope of the arms' mean effects.
    seeds: seeds with a slope.
  """
  metric: str
  family: str
  arms: Tuple[str, ...]
  noise: Tuple[float, ...]
  effects: Tuple[float, ...]
  ci_low: Tuple[float, ...]
  ci_high: Tuple[float, ...]
  trend: dose_lib.Trend
  wls: dose_lib.Trend
  seeds: int

  def as_dict(self) -> Dict:
    row = {"metric": self.metric, "family": self.family,
           "arms": " ".join(self.arms), "seeds": self.seeds}
    for name, t in (("trend", self.trend), ("wls", self.wls)):
      for field in ("slope", "se", "df", "p", "ci_low", "ci_high", "points"):
        row[f"{name}_{field}"] = as_float(getattr(t, field))
    return row



def _plain_noise_arm(arm: str) -> bool:
  """A bits-only arm with weight noise (no `+key=value` settings)."""
  return (arms_lib.weight_bits(arm) is not None and
          not arms_lib.arm_overrides(arm))


def _noise_by_seed(records, arm: str) -> Dict[int, float]:
  out = {}
  for r in records:
    if r.bits == arm:
      std = r.value("noise_std")
      out[int(r.seed)] = float(std) if std and std > 0 else math.nan
  return out


def dose_responses(records, arms: Sequence[str],
                   comparisons: Sequence[paired_lib.PairedComparison],
                   compared: Sequence[Tuple[str, str]],
                   reference: str = arms_lib.REFERENCE,
                   alpha: float = paired_tests.ALPHA) -> List[DoseResponse]:
  """Per metric: effect against log std(δ), quantizers alone and with twins.

  A family is fitted when it has at least 2 arms with measured noise (the
  per-seed slope needs 2 points per seed; the WLS fit 3 arms).
  """
  if reference not in arms:
    return []
  quantizers = [a for a in arms if _plain_noise_arm(a)
                and not arms_lib.is_noise_twin(a)]
  both = [a for a in arms if _plain_noise_arm(a)]
  families = [("quantizers", quantizers)]
  if len(both) > len(quantizers):
    families.append(("quantizers and twins", both))
  by = {(c.arm, c.reference, c.metric): c for c in comparisons}
  out = []
  for key, _ in compared:
    values = values_by_seed(records, list(arms), key)
    for family, fitted in families:
      noise = {a: _noise_by_seed(records, a) for a in fitted}
      fitted = [a for a in fitted
                if any(math.isfinite(v) for v in noise[a].values())]
      if len(fitted) < 2:
        continue
      seeds, effects = dose_lib.seed_effects(values, fitted, reference)
      log_noise = np.array([[math.log(noise[a].get(s, math.nan))
                             if math.isfinite(noise[a].get(s, math.nan))
                             else math.nan for a in fitted] for s in seeds])
      # A seed without its own noise record takes the arm's mean.
      arm_noise = np.array([np.nanmean(list(noise[a].values()))
                            for a in fitted])
      log_noise = np.where(np.isfinite(log_noise), log_noise,
                           np.log(arm_noise)[None, :])
      trend = dose_lib.per_seed_trend(effects, log_noise, alpha)
      rows = [by.get((a, reference, key)) for a in fitted]
      mean_effects = [c.diff if c else math.nan for c in rows]
      ses = [c.sd / math.sqrt(c.n) if c and c.n >= 2 else math.nan
             for c in rows]
      wls = dose_lib.dose_response(mean_effects, ses, np.log(arm_noise),
                                     alpha)
      out.append(DoseResponse(
          key, family, tuple(fitted), tuple(float(v) for v in arm_noise),
          tuple(float(v) for v in mean_effects),
          tuple(c.ci_low if c else math.nan for c in rows),
          tuple(c.ci_high if c else math.nan for c in rows), trend, wls,
          int(trend.points)))
  return out


# --------------------------------------------------------------------------
# Positive control
# --------------------------------------------------------------------------


def positive_controls(arms: Sequence[str],
                      reference: str = arms_lib.REFERENCE) -> List[str]:
  """Arms that change a non-bit setting of the reference (`fp+...`)."""
  base = arms_lib.arm_policy(reference)
  return [a for a in arms if a != reference and arms_lib.arm_overrides(a)
          and arms_lib.arm_policy(a) == base]


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------


def comparison_phrase(c: paired_lib.PairedComparison, name: str) -> str:
  """"final val loss −0.094 [−0.21, +0.02] …: inconclusive"."""
  if not math.isfinite(c.p):
    if math.isfinite(c.diff):
      return (f"{name} {c.diff:+.3f} (not tested: {c.n} paired seed(s) or "
              f"no spread): {c.reading}")
    return f"{name}: no paired values"
  level = round(100 * (1 - c.alpha))
  return (f"{name} {c.diff:+.3f} ({level}% simultaneous CI {c.ci_low:+.3f} "
          f"to {c.ci_high:+.3f}; paired t Holm p {p_text(c.p_holm)}, "
          f"sign-flip p "
          f"{p_text(c.p_sign_flip)}; pairs r {r_text(c.correlation)}"
          + (f"; TOST ±{c.margin:g} p {p_text(c.p_tost)}" if c.margin else "")
          + f"): {c.reading}")


def dose_response_lines(doses: Sequence[DoseResponse],
                        names: Mapping[str, str]) -> List[str]:
  """One line per fitted (metric, family): slope, CI, trend test."""
  lines = []
  for d in doses:
    t, w = d.trend, d.wls
    if not math.isfinite(as_float(t.p)):
      lines.append(f"- {names.get(d.metric, d.metric)}, {d.family} "
                   f"({', '.join(d.arms)}): no trend test ({d.seeds} seeds "
                   "with a slope).")
      continue
    level = round(100 * (1 - t.alpha))
    decided = ("the effect changes with the noise" if as_float(t.p) <= t.alpha
               else "no trend shown")
    wls = (f"; WLS over the {int(as_float(w.points))} arms' mean effects "
           f"{as_float(w.slope):+.3f} [{as_float(w.ci_low):+.3f}, "
           f"{as_float(w.ci_high):+.3f}], p {p_text(as_float(w.p))}"
           if math.isfinite(as_float(w.p)) else "")
    lines.append(
        f"- {names.get(d.metric, d.metric)}, {d.family} ({', '.join(d.arms)}):"
        f" slope {as_float(t.slope):+.3f} per unit of log std(δ) ({level}% CI "
        f"{as_float(t.ci_low):+.3f} to {as_float(t.ci_high):+.3f}; per-seed "
        f"trend test over {d.seeds} seeds, p {p_text(as_float(t.p))}){wls}: "
        f"{decided}.")
  return lines


def positive_control_lines(comparisons: Sequence[paired_lib.PairedComparison],
                           controls: Sequence[str],
                           names: Mapping[str, str],
                           reference: str = arms_lib.REFERENCE,
                           primary: str = PRIMARY_METRIC) -> List[str]:
  """Per control arm: does the instrument detect it in the primary metric?"""
  lines = []
  for arm in controls:
    mine = [c for c in comparisons if c.arm == arm and c.reference == reference]
    head = next((c for c in mine if c.metric == primary), None)
    if head is None or not math.isfinite(head.p):
      lines.append(f"- Positive control {arm}: not tested in "
                   f"{names.get(primary, primary)} (too few paired seeds).")
      continue
    found = head.reading.startswith("differs")
    verdict = ("detected: the instrument finds this established regularizer "
               "on the same seeds with the same analysis" if found else
               "NOT detected: this analysis on these seeds misses an "
               "established regularizer, so its silence about the "
               "quantized arms is weak evidence")
    others = "; ".join(f"{names.get(c.metric, c.metric)}: {c.reading}"
                       for c in mine if c.metric != primary)
    lines.append(f"- Positive control {arm} vs {reference}: "
                 f"{comparison_phrase(head, names.get(primary, primary))} — "
                 f"{verdict}" + (f" (other metrics: {others})" if others else "")
                 + ".")
  return lines
