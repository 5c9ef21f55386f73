"""What a sweep measured: its runs (`RunRecord`) and, per task, what it reports.

A `RunRecord` is one finished run's bits, seed, result.json and history.csv;
`value(key)` reads a figure of it, derived ones included (std(δ), the
validation loss's rise). A `SweepTask` (`CLASSIFICATION`, `DETECTION`) names
the figures a sweep of that task aggregates, compares and draws.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

from kqreg.study.sweep import overfitting as overfitting_lib
from kqreg.study.sweep import statistics as stats_lib

__all__ = ["RunRecord", "SweepTask", "CLASSIFICATION", "DETECTION", "TASKS",
           "METRICS", "DETECTION_METRICS"]


# (result key, column label) of the figures a classification sweep aggregates
# per bit setting.
METRICS = (
    ("train_accuracy", "train acc"),
    ("val_accuracy", "val acc"),
    ("test_accuracy", "test acc"),
    ("train_loss", "train loss"),
    ("val_loss", "val loss"),
    ("best_val_loss", "best val loss"),
    ("gap_accuracy", "gap acc (train-val)"),
    ("gap_loss", "gap loss (val-train)"),
    ("val_loss_rise", "val loss rise"),
    ("noise_std", "std(δ)"),
    ("noise_model_std", "Δ/√12"),
)


DETECTION_METRICS = (
    ("train_loss", "train loss"),
    ("val_loss", "val loss"),
    ("best_val_loss", "best val loss"),
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
      plotted against std(δ) in gap.png.
    curves: (history key, axis label, log scale) drawn per epoch, one PNG
      each, named after the key.
    legend: what the table's columns mean, for report.md.
    compared: (key, name) of the metrics tested arm against reference, in
      verdict order; each metric is one Holm family.
  """
  name: str
  metrics: Tuple[Tuple[str, str], ...]
  quality: Tuple[str, str]
  gaps: Tuple[Tuple[str, str, str], ...]
  curves: Tuple[Tuple[str, str, bool], ...]
  legend: str
  compared: Tuple[Tuple[str, str], ...] = ()


_LOSS_GAP = ("gap_loss", "loss gap", "val loss − train loss")


_COMPARED_LOSSES = (("gap_loss", "loss gap"), ("val_loss", "final val loss"),
                    ("best_val_loss", "best val loss"))


_COMMON_LEGEND = ("gap loss = validation − train loss; best val loss = the "
                  "lowest epoch's; val loss rise = final minus minimum of "
                  "the validation loss's running median over a tenth of the "
                  "epochs (at least 3); std(δ) and Δ/√12 are means over "
                  "quantized layers at the end of training.")


CLASSIFICATION = SweepTask(
    "classify", METRICS, ("val_accuracy", "val acc"),
    (_LOSS_GAP, ("gap_accuracy", "accuracy gap", "train acc − val acc")),
    (("val_loss", "validation loss (log)", True),),
    "Mean ± std over seeds. gap acc = train − validation accuracy; "
    + _COMMON_LEGEND,
    _COMPARED_LOSSES + (("val_accuracy", "val acc"),))


DETECTION = SweepTask(
    "detect", DETECTION_METRICS, ("val_map50", "val mAP@0.5"), (_LOSS_GAP,),
    (("val_loss", "validation loss (log)", True),
     ("val_map50", "validation mAP@0.5", False)),
    "Mean ± std over seeds. Losses are keras-cv's YOLOv8 loss (box CIoU + "
    "class BCE); mAP is COCO-style on the validation split; " + _COMMON_LEGEND,
    _COMPARED_LOSSES + (("val_map50", "val mAP@0.5"),))


TASKS = {task.name: task for task in (CLASSIFICATION, DETECTION)}


@dataclasses.dataclass
class RunRecord:
  """One finished run: its bits, seed, result dict and per-epoch history."""
  bits: str
  seed: int
  result: Dict
  history: List[Dict[str, float]]

  def curve(self, key: str) -> List[float]:
    """`key` per epoch from the history (NaN where an epoch lacks it)."""
    return [float(h.get(key, math.nan)) for h in self.history]

  def rise_test(self, alpha: float = stats_lib.ALPHA,
                rho: Optional[float] = None
               ) -> Optional[overfitting_lib.RiseTest]:
    """The overfitting test of this run's validation loss (None if short).

    `rho`, the epoch noise's correlation, is estimated from this curve
    alone when not given (the report passes the arm's pooled estimate).
    """
    return overfitting_lib.rise_test(self.curve("val_loss"), alpha, rho)

  def value(self, key: str) -> Optional[float]:
    """A figure of the run by key: result keys plus derived ones.

    `noise_std` / `noise_model_std` read `result["noise"]["delta_std"]` /
    `["model_std"]`; `val_loss_rise` and `val_loss_rise_noise` come from the
    history (`overfitting_lib.rise_test`); `best_val_loss` falls back to the
    history's minimum.
    """
    if key == "noise_std":
      return (self.result.get("noise") or {}).get("delta_std")
    if key == "noise_model_std":
      return (self.result.get("noise") or {}).get("model_std")
    if key in ("val_loss_rise", "val_loss_rise_noise"):
      test = self.rise_test()
      if test is None:
        return None
      return test.rise if key == "val_loss_rise" else test.noise
    value = self.result.get(key)
    if value is None and key == "best_val_loss":
      finite = [v for v in self.curve("val_loss") if math.isfinite(v)]
      return min(finite) if finite else None
    return None if value is None else float(value)
