"""Bit-width sweep report: aggregate runs, test against fp, plot.

Input: the result.json and history.csv of each run of a sweep (a
`RunRecord` each). Output, in one folder:

  runs.csv         one row per run (and its own overfitting test)
  results.csv      per arm: mean and std over seeds
  comparisons.csv  per (arm, reference, metric), paired by seed: paired t,
                   Holm with compatible intervals, sign-flip check, pairs'
                   correlation, TOST within the declared margin, reading
  comparisons_unpaired.csv  Welch (only pairs whose seeds differ)
  dose_response.csv / .png  paired effect against log std(δ): slope, CI,
                   per-seed trend test (quantizers solid, twins hollow)
  report.md        the tables, the verdict, how it is computed, the plots
  val_loss.png     validation loss per epoch per arm (QReg Figure 1)
  val_map50.png    detection only: validation mAP@0.5 per epoch
  gap.png          generalization gap of every run against its std(δ)
  noise.png        measured std(δ) and the Δ/√12 model against bits (log)

What is aggregated, compared and drawn depends on the task: `CLASSIFICATION`
or `DETECTION` (a `SweepTask`). The verdict comes from
`kqreg.study.sweep.decision` and `paired` (see `VERDICT_METHOD`; Welch from
`statistics` only where seeds differ): nothing is tuned to a conclusion,
and with too few seeds it reads "inconclusive".
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

from kqreg.io_utils import atomic_write_text
from kqreg.study.sweep import analysis
from kqreg.study.sweep import arms as arms_lib
from kqreg.study.sweep import decision as decision_lib
from kqreg.study.sweep import figures
from kqreg.study.sweep import overfitting as overfitting_lib
from kqreg.study.sweep import paired as paired_lib
from kqreg.study.sweep import statistics as stats_lib
from kqreg.study.sweep import tables
from kqreg.study.sweep.records import CLASSIFICATION, RunRecord, SweepTask
from kqreg.study.sweep.tables import (markdown_table, overfitting_table,
                                 verdict_table)

__all__ = ["VERDICT_METHOD", "verdict", "write_report"]


VERDICT_METHOD = (
    "**How the verdict is computed.** Seed s of every arm starts from the "
    "same initial weights, corrupts the same training labels and sees the "
    "same batches in the same order (tests/test_sweep_pairing.py), so arms "
    "are compared paired by seed: each arm against full precision (`fp`), "
    "and each noise twin (`n4`: uniform noise of the 4-bit step instead of "
    "rounding) against its quantized arm (`w4`), in final validation loss, "
    "best validation loss, loss gap (validation − train) and validation "
    "accuracy (detection: mAP@0.5). Per comparison: the mean of the "
    "per-seed differences (arm − reference), the paired t-test, and as its "
    "check the exact sign-flip permutation test (all 2^n sign patterns of "
    "the differences; no normality assumed); r is the correlation of the "
    "pairs, the seed-to-seed spread that the pairing cancels. The "
    "comparisons of one metric are one family: their paired p-values are "
    "Holm-corrected at α = {alpha}, and the intervals printed are "
    "Holm-compatible simultaneous intervals (Strassburger & Bretz 2008): an "
    "interval excludes 0 exactly when Holm rejects, and a rejected "
    "difference's interval ends at 0. Equivalence margins m are declared "
    "before the run (`--equivalence_margins`); the two one-sided paired "
    "tests (TOST, α = {alpha}) test |Δ| < m. Each arm and metric gets one "
    "reading: *differs (higher/lower)* when Holm rejects and TOST does not; "
    "*equivalent within ±m* when TOST rejects and Holm does not; *differs "
    "but within ±m* when both reject; *inconclusive* when neither does "
    "(more seeds needed; without a declared margin equivalence is never "
    "claimed). Seeds that only one arm of a pair has are left out of that "
    "pair; Welch's two-sample test is used only for pairs whose arms share "
    "fewer than 2 seeds. Dose-response: per seed, the slope of its "
    "paired effects against log std(δ) (the measured weight noise of each "
    "run) across the quantized arms, t-tested over the seeds (primary: "
    "seeds are independent replicates, the arms of one seed are not); the "
    "weighted least-squares slope of the arms' mean effects is shown "
    "beside it. A positive control (an arm changing another setting, e.g. "
    "`fp+weight_decay=…`) is read in final validation loss with the same "
    "analysis: if it is not detected, silence about the quantized arms is "
    "weak evidence. Overfitting is tested per run: the rise "
    "of the validation loss (final minus minimum of its running median over "
    "a tenth of the epochs, at least 3) is compared with the rise that a "
    "flat curve reaches from noise alone. The noise is measured from the "
    "run's own curve (its level from the median absolute second "
    "difference; its epoch-to-epoch correlation ρ, which makes a loss "
    "wander, from the first differences of the second half of all the "
    "arm's curves), and the null is simulated: {draws} flat curves of the "
    "same length with AR(1) noise at the upper 90% confidence bound of "
    "that ρ (a ρ underestimated from a few short curves would make the "
    "null too narrow; the bound is simulated too); a run fires when its rise, in "
    "units of its noise, exceeds the null's 1 − α quantile. The seeds of an "
    "arm are combined with Stouffer's method (on each seed's mean normal "
    "score, so a curve that ends at its minimum, p = 1, does not veto the "
    "arm) and the arms Holm-corrected; an arm overfits when its adjusted "
    "p ≤ α. This arm-level test's false-positive rate is measured, not "
    "assumed: for each arm the report runs the same test on "
    "{calibration_draws} simulated arms that do not overfit (flat curves "
    "with AR(1) noise of the arm's ρ̂, its epochs and seeds; "
    "`overfitting.false_positive_rate`) and prints the rate in the "
    "overfitting table; an arm's verdict is flagged where the rate exceeds "
    "α by more than two Monte Carlo standard errors. With fewer than "
    "{seeds} seeds per arm the report warns: such tests detect only large "
    "differences.")


def _comparison_phrase(c: stats_lib.Comparison, name: str,
                       first: bool = True) -> str:
  if not math.isfinite(c.p):
    if math.isfinite(c.diff):
      return (f"{name} {c.diff:+.3f} (not tested: fewer than 2 seeds or no "
              "spread)")
    return f"{name}: no values"
  level = round(100 * (1 - c.alpha))
  head = (f"{name} {c.diff:+.3f} ({level}% CI {c.ci_low:+.3f} to "
          f"{c.ci_high:+.3f}, Holm p {tables.p_text(c.p_holm)})")
  if c.significant:
    return f"{head}, {'lower' if c.diff < 0 else 'higher'} than {c.reference}"
  return f"{head}, no difference shown (no equivalence claimed)"


def _overfitting_line(v: overfitting_lib.ArmOverfitting,
                      rate: Optional[float] = None,
                      draws: int = overfitting_lib.CALIBRATION_DRAWS) -> str:
  judged = "it overfits" if v.overfits else "no overfitting shown"
  if rate is not None and rate > v.alpha + 2 * math.sqrt(
      v.alpha * (1 - v.alpha) / max(draws, 1)):
    judged += (f" (but this test's measured false-positive rate at ρ̂ "
               f"{v.rho_estimate:.2f} is {rate:.3f}, above α: read with "
               "care)")
  return (f"- {v.arm}: validation loss (running median) ends {v.rise_mean:.3f} "
          f"above its minimum (mean of {v.seeds} seeds; flat noise alone "
          f"exceeds {v.threshold_mean:.3f} with probability α); {v.fired} of "
          f"{v.seeds} seeds fire, combined p {tables.p_text(v.p)}, Holm p "
          f"{tables.p_text(v.p_holm)}: {judged}.")


def verdict(records: Sequence[RunRecord], bits_order: Sequence[str],
            task: SweepTask = CLASSIFICATION,
            reference: str = arms_lib.REFERENCE,
            alpha: float = stats_lib.ALPHA,
            comparisons: Optional[Sequence[stats_lib.Comparison]] = None,
            overfit: Optional[Dict[str, overfitting_lib.ArmOverfitting]] = None,
            *, margins: Optional[Dict[str, float]] = None,
            paired: Optional[Sequence[paired_lib.PairedComparison]] = None,
            doses: Optional[Sequence[decision_lib.DoseResponse]] = None,
            rates: Optional[Dict[str, float]] = None
           ) -> List[str]:
  """Plain-language lines: warnings, overfitting, readings, trend, control.

  A comparison line reads "- w4: loss gap −0.038 (95% simultaneous CI … ;
  paired t Holm p …, sign-flip p …; pairs r …; TOST ±m p …): inconclusive;
  final val loss …" for an arm against `reference` (paired by seed), "- n4
  vs w4: …" for a noise twin against its arm, and "- w3 (unpaired: …,
  Welch): …" only for a pair whose arms share fewer than 2 seeds. Then the
  dose-response lines and the positive controls'. `comparisons` (Welch, of
  the unpaired pairs), `overfit`, `paired`, `doses` and `rates` may be
  passed when already computed; `margins` are the declared equivalence
  margins by metric key.
  """
  if paired is None:
    paired = analysis.compare_paired(records, bits_order, task, reference,
                                     alpha, margins)
  if comparisons is None:
    comparisons = analysis.compare_unpaired(records, bits_order, task,
                                            reference, alpha)
  if overfit is None:
    overfit = analysis.overfitting(records, bits_order, alpha)
  if doses is None:
    doses = decision_lib.dose_responses(
        records, analysis.present_arms(records, bits_order), paired,
        task.compared, reference, alpha)
  rates = rates or {}
  lines = list(analysis.seed_warnings(records, bits_order))
  lines += [_overfitting_line(v, rates.get(v.arm)) for v in overfit.values()]
  if reference not in analysis.present_arms(records, bits_order):
    lines.append(f"No `{reference}` run in the sweep: nothing to compare "
                 "against.")
  names = dict(task.compared)
  unpaired = {(c.arm, c.reference) for c in comparisons}
  by_pair: Dict[Tuple[str, str], List[str]] = {}
  for c in paired:
    if (c.arm, c.reference) not in unpaired:
      by_pair.setdefault((c.arm, c.reference), []).append(
          decision_lib.comparison_phrase(c, names.get(c.metric, c.metric)))
  for (arm, ref), parts in by_pair.items():
    label = arm if ref == reference else f"{arm} vs {ref}"
    lines.append(f"- {label}: " + "; ".join(parts) + ".")
  welch: Dict[Tuple[str, str], List[str]] = {}
  for c in comparisons:
    parts = welch.setdefault((c.arm, c.reference), [])
    parts.append(_comparison_phrase(c, names.get(c.metric, c.metric),
                                    first=not parts))
  for (arm, ref), parts in welch.items():
    lines.append(f"- {arm} (unpaired: other seeds than {ref}, Welch): "
                 + "; ".join(parts) + ".")
  if doses:
    lines.append("Dose-response (paired effect against log std(δ)):")
    lines += decision_lib.dose_response_lines(doses, names)
  lines += decision_lib.positive_control_lines(
      paired, decision_lib.positive_controls(
          analysis.present_arms(records, bits_order), reference),
      names, reference)
  return lines


def _run_rows(records: Sequence[RunRecord], task: SweepTask, alpha: float,
              overfit: Dict[str, overfitting_lib.ArmOverfitting]) -> List[Dict]:
  rows = []
  for r in records:
    row = {"bits": r.bits, "seed": r.seed}
    row.update({key: r.value(key) for key, _ in task.metrics})
    row["best_epoch"] = r.result.get("best_epoch")
    row["wall_time_s"] = r.result.get("wall_time_s")
    arm = overfit.get(r.bits)
    test = r.rise_test(alpha, arm.rho if arm else None)
    row["val_loss_rise_rho"] = test.rho if test else None
    row["val_loss_rise_noise"] = test.noise if test else None
    row["val_loss_rise_threshold"] = test.threshold if test else None
    row["val_loss_rise_p"] = test.p if test else None
    row["overfits"] = test.overfits if test else None
    rows.append(row)
  return rows


def write_report(output_dir: str, records: Sequence[RunRecord],
                 bits_order: Sequence[str], *, title: str = "Bit-width sweep",
                 command: str = "", wall_time_s: Optional[float] = None,
                 task: SweepTask = CLASSIFICATION,
                 alpha: float = stats_lib.ALPHA,
                 margins: Optional[Dict[str, float]] = None,
                 calibration_draws: int = overfitting_lib.CALIBRATION_DRAWS
                ) -> Dict:
  """Writes the CSVs, report.md and the PNGs; returns a summary.

  Args:
    output_dir: folder for the files (created).
    records: every finished run of the sweep.
    bits_order: the arms in report order (`--sweep_bits`).
    title, command, wall_time_s: for report.md's head.
    task: `CLASSIFICATION` or `DETECTION`.
    alpha: the level of every test (family-wise within a metric).
    margins: equivalence margins by metric key, declared before the run
      (`--equivalence_margins`); metrics without one get no TOST.
    calibration_draws: simulated null arms per arm for the overfitting
      test's measured false-positive rate (0: not measured).

  Returns:
    `{"rows": aggregated rows, "table": markdown, "verdict": lines,
    "verdict_table": markdown (paired), "readings_table": markdown,
    "overfitting_table": markdown, "paired": [PairedComparison.as_dict()],
    "comparisons": the same (comparisons.csv), "unpaired":
    [Comparison.as_dict()] (Welch, pairs on different seeds only),
    "dose_response": [DoseResponse.as_dict()], "margins": margins,
    "false_positive_rates": arm -> rate, "overfitting":
    [ArmOverfitting.as_dict()], "warnings": lines, "paths": written files}`.
  """
  os.makedirs(output_dir, exist_ok=True)
  rows = analysis.aggregate(records, bits_order, task)
  table = markdown_table(rows, task)
  margins = dict(margins or {})
  arms = analysis.present_arms(records, bits_order)
  names = dict(task.compared)
  paired = analysis.compare_paired(records, bits_order, task, alpha=alpha,
                                   margins=margins)
  comparisons = analysis.compare_unpaired(records, bits_order, task,
                                          arms_lib.REFERENCE, alpha)
  doses = decision_lib.dose_responses(records, arms, paired, task.compared,
                                      alpha=alpha)
  overfit = analysis.overfitting(records, bits_order, alpha)
  rates = analysis.false_positive_rates(records, overfit, alpha,
                                        calibration_draws)
  warnings = analysis.seed_warnings(records, bits_order)
  lines = verdict(records, bits_order, task, alpha=alpha,
                  comparisons=comparisons, overfit=overfit, paired=paired,
                  doses=doses, rates=rates, margins=margins)
  comparison_table = tables.paired_table(paired, names)
  readings = tables.readings_table(paired, names)
  overfit_table = overfitting_table(overfit, rates)
  atomic_write_text(os.path.join(output_dir, "runs.csv"),
                    tables.csv_text(_run_rows(records, task, alpha, overfit)))
  atomic_write_text(os.path.join(output_dir, "results.csv"),
                    tables.csv_text(rows))
  atomic_write_text(os.path.join(output_dir, "comparisons.csv"),
                    tables.csv_text([c.as_dict() for c in paired]))
  extra_csvs = []
  if comparisons:
    extra_csvs.append("comparisons_unpaired.csv")
    atomic_write_text(os.path.join(output_dir, extra_csvs[-1]),
                      tables.csv_text([c.as_dict() for c in comparisons]))
  if doses:
    extra_csvs.append("dose_response.csv")
    atomic_write_text(os.path.join(output_dir, extra_csvs[-1]),
                      tables.csv_text([d.as_dict() for d in doses]))
  plots = figures.write_figures(output_dir, records, rows, arms, task)
  if doses:
    plots.append(os.path.join(output_dir, "dose_response.png"))
    figures.dose_response_figure(doses, names, plots[-1])
  margin_text = (", ".join(f"{names.get(k, k)} ±{v:g}"
                           for k, v in margins.items())
                 if margins else "none (equivalence is never claimed)")
  md = [f"# {title}", ""]
  if command:
    md += ["Command:", "", "```", command, "```", ""]
  if wall_time_s is not None:
    run_times = [r.result.get("wall_time_s") or 0.0 for r in records]
    read_back = sum(bool(r.result.get("skipped")) for r in records)
    if not read_back:
      trained = "all trained by this command"
    else:
      which = ("all" if read_back == len(records)
               else f"{read_back} of the")
      trained = (f"{which} {len(records)} had finished before this command "
                 "and were read back, not retrained")
    md += [f"Wall time: {wall_time_s / 60:.1f} min for {len(records)} runs "
           f"({trained}; the runs' own wall times add up to "
           f"{sum(run_times) / 60:.1f} min).", ""]
  md += [f"**{w}**" for w in warnings] + ([""] if warnings else [])
  md += [task.legend, "", table, "",
         "## Verdict (computed from the numbers above)", "",
         f"Equivalence margins (declared before the run): {margin_text}; "
         f"α = {alpha:g}.", "",
         *[l for l in lines if l not in warnings], "",
         "### Readings (arm − reference, paired by seed)", "", readings, "",
         f"### Comparisons (paired by seed; paired t-test Holm-corrected per "
         f"metric with Holm-compatible simultaneous intervals, α = "
         f"{alpha:g}; exact sign-flip test as a check; r: correlation of "
         "the pairs)", "", comparison_table, ""]
  if comparisons:
    md += ["### Unpaired comparisons (Welch's t-test, only where the seeds "
           "differ)", "", verdict_table(comparisons, task), ""]
  md += ["### Overfitting (validation-loss rise against a flat-noise null)",
         "", overfit_table if overfit else "No curve long enough to test.",
         "", VERDICT_METHOD.format(alpha=f"{alpha:g}",
                                   draws=stats_lib.NULL_DRAWS,
                                   calibration_draws=calibration_draws,
                                   seeds=stats_lib.RECOMMENDED_SEEDS), "",
         "## Plots", ""]
  md += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
  atomic_write_text(os.path.join(output_dir, "report.md"), "\n".join(md) + "\n")
  return {"rows": rows, "table": table, "verdict": lines,
          "verdict_table": comparison_table, "readings_table": readings,
          "overfitting_table": overfit_table,
          "paired": [c.as_dict() for c in paired],
          "comparisons": [c.as_dict() for c in paired],
          "unpaired": [c.as_dict() for c in comparisons],
          "dose_response": [d.as_dict() for d in doses],
          "margins": margins, "false_positive_rates": rates,
          "overfitting": [v.as_dict() for v in overfit.values()],
          "warnings": warnings,
          "paths": [os.path.join(output_dir, n) for n in
                    ("report.md", "results.csv", "runs.csv",
                     "comparisons.csv", *extra_csvs)] + plots}
