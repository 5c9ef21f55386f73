"""Does noise-guided allocation beat the rules of thumb at equal size?

For one model and dataset: train a float checkpoint once, then give every
policy the same short QAT from it (`init_from`), with the same seeds, and
export each result to TFLite and check it in LiteRT. Three budgets, each
set before any run by a policy people use, so nothing is tuned on results:

  A  kernel bytes of "w4a8,first=w8a8,last=w8a8" (the common rule):
     uniform w4a8 (no larger), the rule, and auto:<those bytes>
  B  mean weight bits of "w2a8,first=w8a8,last=w8a8":
     uniform w2a8 (no larger), the rule, and auto:<those bits>
  C  3 mean weight bits: uniform w3a8 and auto:3

Within a budget the allocated policy is compared with each other arm on
validation accuracy, in Keras and in LiteRT, paired by seed (same
checkpoint, same data order) with the sweep report's analysis
(`kqreg.study.sweep.paired.compare_paired`): mean difference, paired t,
Holm over the budget's comparisons with Holm-compatible simultaneous
intervals, the exact sign-flip check, TOST within ±`EQUIVALENCE_MARGIN`
and one reading (differs / equivalent / both / inconclusive): "ties" is
claimed only as "equivalent within ±margin". Separately, how well the per-layer noise ranks layers:
Spearman ρ of the first-order prediction and of the measured output
perturbation against the measured loss increase, per bit-width.

Writes mixed_precision.md, runs.csv, comparisons.csv, ranking.csv and
accuracy.png to the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats

from kqreg.classification import task as classify
from kqreg.mixed_precision import layer_sensitivity as layer_sensitivity
from kqreg.qat import policy as policy_lib
from kqreg.runs import model_dir as model_dir_lib
from kqreg.runs import train as train_lib
from kqreg.io_utils import atomic_write_text
from kqreg.mixed_precision.quantizable import quantizable_layers, stored_bytes
from kqreg.study.sweep import paired as paired_lib
from kqreg.study.sweep import statistics as stats_lib
from kqreg.study.sweep import tables

__all__ = ["Setup", "SETUPS", "Arm", "arms_for", "paired_test", "run_study",
           "policy_size", "ranking"]

# Accuracy difference that counts as none (TOST), declared with the
# paired analysis on 2026-12-06, after docs/mixed_precision/ was run: the
# readings of those results against it are post hoc.
EQUIVALENCE_MARGIN = 0.01
RULE_HIGH = "w4a8,first=w8a8,last=w8a8"
RULE_LOW = "w2a8,first=w8a8,last=w8a8"


@dataclasses.dataclass(frozen=True)
class Setup:
  """One model on one dataset: the float checkpoint and the short QAT."""
  name: str
  dataset: str
  model: str
  model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
  train_examples: Optional[int] = None
  float_epochs: int = 8
  float_lr: float = 1e-3
  qat_epochs: int = 2
  qat_lr: float = 2e-4
  batch_size: int = 64


SETUPS = {
    "cnn": Setup("cnn", "kqreg_mnist", "cnn"),
    # On kqreg_textures MobileNetV2 (32x32 in, 1x1 at the end) stayed at
    # chance after 10 float epochs; the MNIST subset it learns.
    "mobilenetv2": Setup("mobilenetv2", "kqreg_mnist", "mobilenetv2",
                         {"alpha": 0.35}, float_epochs=10),
}


@dataclasses.dataclass(frozen=True)
class Arm:
  budget: str  # "A", "B", "C"
  kind: str    # "allocated", "uniform", "rule"
  bits: str    # the --bits value


def policy_size(model, policy: str) -> Dict[str, float]:
  """Mean weight bits and stored kernel bytes of `policy` on `model`."""
  layers, int4 = quantizable_layers(model, policy_lib.BitPolicy.parse(policy))
  params = sum(l.params for l in layers)
  bits = sum(l.bits.weight * l.params for l in layers)
  size = sum(stored_bytes(l.params, l.bits.weight, int4) for l in layers)
  return {"mean_bits": bits / params, "weight_bytes": size}


def arms_for(float_model) -> List[Arm]:
  """The arms of budgets A, B and C (see the module docstring)."""
  high = policy_size(float_model, RULE_HIGH)
  low = policy_size(float_model, RULE_LOW)
  # Round the bits budget down at its shown precision: auto must not get
  # more than the rule has.
  low_bits = math.floor(low["mean_bits"] * 1e4) / 1e4
  return [
      Arm("A", "uniform", "w4a8"), Arm("A", "rule", RULE_HIGH),
      Arm("A", "allocated", f"auto:{int(high['weight_bytes'])}B"),
      Arm("B", "uniform", "w2a8"), Arm("B", "rule", RULE_LOW),
      Arm("B", "allocated", f"auto:{low_bits:g}"),
      Arm("C", "uniform", "w3a8"), Arm("C", "allocated", "auto:3"),
  ]


def paired_test(x: Sequence[float], y: Sequence[float],
                alpha: float = stats_lib.ALPHA) -> Dict[str, float]:
  """Paired t-test of mean(x − y): diff, interval, p (seeds paired)."""
  d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
  n = len(d)
  diff = float(np.mean(d))
  se = float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
  if not se or not math.isfinite(se):
    return {"diff": diff, "ci_low": diff, "ci_high": diff, "p": math.nan,
            "n": n}
  half = float(scipy_stats.t.ppf(1 - alpha / 2, n - 1)) * se
  p = float(2 * scipy_stats.t.sf(abs(diff / se), n - 1))
  return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half,
          "p": p, "n": n}


def ranking(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Spearman ρ against the measured loss increase, per bit-width."""
  out = []
  for bits in sorted({r["bits"] for r in rows}):
    at = [r for r in rows if r["bits"] == bits
          and r.get("loss_increase") is not None]
    for key in ("predicted", "measured"):
      pairs = [(r[key], r["loss_increase"]) for r in at
               if r.get(key) is not None]
      if len(pairs) < 3:
        continue
      rho, p = scipy_stats.spearmanr(*zip(*pairs))
      out.append({"bits": bits, "ranked_by": key, "layers": len(pairs),
                  "spearman_rho": float(rho), "p": float(p)})
  return out


def _kernel_figures(tflite_path: str) -> Dict[str, float]:
  with open(tflite_path + ".json") as f:
    report = json.load(f)
  kernels = [w for w in report["weights"] if w["role"] == "weights"
             and w.get("bits")]
  elements = sum(w["elements"] for w in kernels)
  return {"export_weight_bytes": sum(w["bytes"] for w in kernels),
          "export_mean_bits": sum(w["bits"] * w["elements"]
                                  for w in kernels) / elements}


def _config(setup: Setup, model_dir: str, **overrides):
  values = dict(model_dir=model_dir, dataset=setup.dataset, model=setup.model,
                model_kwargs=dict(setup.model_kwargs),
                train_examples=setup.train_examples,
                batch_size=setup.batch_size, noise_analysis=False, verbose=0)
  values.update(overrides)
  return classify.ClassifyConfig(**values)


def run_study(setup: Setup, output_dir: str, seeds: Sequence[int],
              log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Trains, exports and compares every arm; writes the report files."""
  model_dir_lib.make_dir(output_dir, "output_dir")
  float_dir = os.path.join(output_dir, "float")
  base = train_lib.run(_config(setup, float_dir, bits="fp",
                          epochs=setup.float_epochs,
                          learning_rate=setup.float_lr, seed=0))
  log(f"float checkpoint: val acc {base['val_accuracy']:.4f}")
  task, config, float_model = model_dir_lib.load_run(float_dir)
  data = task.load(config)
  calibration = next(iter(task.datasets(
      dataclasses.replace(config, batch_size=256), data)["train_eval"]))
  sens = layer_sensitivity.sensitivity(float_model, calibration,
                                       bits=(2, 3, 4, 8))
  rank = ranking(sens)

  arms = arms_for(float_model)
  records = []
  for arm in arms:
    for seed in seeds:
      slug = arm.bits.replace(",", "_").replace(":", "").replace("=", "")
      run_dir = os.path.join(output_dir, "runs", f"{slug}_seed{seed}")
      result = train_lib.run(_config(
          setup, run_dir, bits=arm.bits, init_from=float_dir,
          epochs=setup.qat_epochs, learning_rate=setup.qat_lr, seed=seed,
          export_tflite=True))
      record = {"budget": arm.budget, "kind": arm.kind, "bits": arm.bits,
                "policy": result.get("policy", arm.bits), "seed": seed,
                "val_accuracy": result["val_accuracy"],
                "tflite_accuracy": result["tflite"]["tflite_accuracy"],
                **_kernel_figures(result["tflite"]["path"])}
      records.append(record)
      log(f"{arm.budget} {arm.kind:<9} {arm.bits:<28} seed {seed}: val acc "
          f"{record['val_accuracy']:.4f}, LiteRT {record['tflite_accuracy']:.4f}"
          f", {record['export_weight_bytes']:,} kernel bytes, "
          f"{record['export_mean_bits']:.3f} mean bits")

  comparisons = _compare(records, arms, seeds)
  text = _markdown(setup, base, records, comparisons, rank, seeds)
  atomic_write_text(os.path.join(output_dir, "runs.csv"),
                    tables.csv_text(records))
  atomic_write_text(os.path.join(output_dir, "comparisons.csv"),
                    tables.csv_text(comparisons))
  atomic_write_text(os.path.join(output_dir, "ranking.csv"),
                    tables.csv_text(rank))
  atomic_write_text(os.path.join(output_dir, "mixed_precision.md"), text)
  _plot(records, arms, os.path.join(output_dir, "accuracy.png"), setup)
  return {"records": records, "comparisons": comparisons, "ranking": rank,
          "markdown": text}


def _compare(records, arms, seeds,
             margin: float = EQUIVALENCE_MARGIN) -> List[Dict[str, Any]]:
  """Allocated minus each other arm of its budget, paired by seed.

  One Holm family per budget (both metrics), `paired.compare_paired`: the
  interval is Holm-compatible and simultaneous, and each comparison gets
  its sign-flip p, pairs' correlation, TOST p within ±margin and reading.
  """
  by = {(r["bits"], r["seed"]): r for r in records}
  metrics = ("val_accuracy", "tflite_accuracy")
  out = []
  for budget in sorted({a.budget for a in arms}):
    group = [a for a in arms if a.budget == budget]
    allocated = next(a for a in group if a.kind == "allocated")
    others = [a for a in group if a is not allocated]
    values = {f"{a.bits}|{m}": {s: by[(a.bits, s)][m] for s in seeds
                                if (a.bits, s) in by}
              for a in group for m in metrics}
    pairs = [(f"{allocated.bits}|{m}", f"{o.bits}|{m}")
             for o in others for m in metrics]
    results = paired_lib.compare_paired(values, pairs, "accuracy", margin)
    for (o, m), c in zip(((o, m) for o in others for m in metrics), results):
      out.append({"budget": budget, "allocated": allocated.bits,
                  "against": o.bits, "against_kind": o.kind, "metric": m,
                  "diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high,
                  "p": c.p, "n": c.n, "p_holm": c.p_holm,
                  "p_sign_flip": c.p_sign_flip, "correlation": c.correlation,
                  "margin": margin, "p_tost": c.p_tost,
                  "reading": c.reading})
  return out


def _mean_ci(values: Sequence[float]):
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float(v.mean()), math.nan
  half = float(scipy_stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1)
               / math.sqrt(len(v)))
  return float(v.mean()), half


def _markdown(setup, base, records, comparisons, rank, seeds) -> str:
  lines = [f"# Mixed precision at equal size: {setup.model} on "
           f"{setup.dataset}", "",
           f"Float checkpoint: {setup.float_epochs} epochs, val acc "
           f"{base['val_accuracy']:.4f}. Every arm: {setup.qat_epochs} QAT "
           f"epochs from it at lr {setup.qat_lr:g}, seeds "
           f"{', '.join(map(str, seeds))}; accuracy on the validation split "
           "(Keras) and of the exported file in LiteRT (first 256 "
           "validation images). Bytes and bits are read from the export "
           "report (kernels only).", "",
           "| budget | arm | policy (seed 0) | kernel bytes | mean bits | "
           "val acc (95% CI) | LiteRT acc (95% CI) |", "|" + "---|" * 7]
  seen = []
  for r in records:
    if r["bits"] in seen:
      continue
    seen.append(r["bits"])
    group = [x for x in records if x["bits"] == r["bits"]]
    acc, acc_ci = _mean_ci([x["val_accuracy"] for x in group])
    lite, lite_ci = _mean_ci([x["tflite_accuracy"] for x in group])
    lines.append(
        f"| {r['budget']} | {r['kind']} `{r['bits']}` | `{r['policy']}` | "
        f"{r['export_weight_bytes']:,} | {r['export_mean_bits']:.3f} | "
        f"{acc:.4f} ± {acc_ci:.4f} | {lite:.4f} ± {lite_ci:.4f} |")
  lines += ["", "Allocated minus each other arm of its budget, paired by "
            "seed (paired t, Holm over each budget's comparisons with "
            "Holm-compatible simultaneous 95% intervals, α = 0.05; exact "
            "sign-flip test as a check; TOST within the declared margin):",
            "",
            "| budget | against | metric | diff | simultaneous CI | p | "
            "p (Holm) | p (sign-flip) | p (TOST) | reading |",
            "|" + "---|" * 10]
  for c in comparisons:
    ci = (f"{c['ci_low']:+.4f} to {c['ci_high']:+.4f}"
          if math.isfinite(c["ci_low"]) else "– (no spread)")
    lines.append(
        f"| {c['budget']} | `{c['against']}` | {c['metric']} | "
        f"{c['diff']:+.4f} | {ci} | "
        f"{tables.p_text(c['p'])} | {tables.p_text(c.get('p_holm', math.nan))}"
        f" | {tables.p_text(c.get('p_sign_flip', math.nan))} | "
        f"{tables.p_text(c.get('p_tost', math.nan))} | "
        f"{c.get('reading', '–')} |")
  lines += ["", "How well per-layer noise ranks layers by their measured "
            "loss increase (one layer quantized, float checkpoint, 256 "
            "training images):", "",
            "| bits | ranked by | layers | Spearman ρ | p |", "|---|---|---|---|---|"]
  for r in rank:
    lines.append(f"| w{r['bits']} | {r['ranked_by']} | {r['layers']} | "
                 f"{r['spearman_rho']:+.3f} | {tables.p_text(r['p'])} |")
  return "\n".join(lines) + "\n"


def _plot(records, arms, path: str, setup: Setup) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(9, 4))
  colors = {"uniform": "tab:gray", "rule": "tab:blue",
            "allocated": "tab:red"}
  for i, arm in enumerate(arms):
    group = [r for r in records if r["bits"] == arm.bits]
    for offset, metric, marker in ((-0.15, "val_accuracy", "o"),
                                   (0.15, "tflite_accuracy", "s")):
      mean, ci = _mean_ci([r[metric] for r in group])
      ax.errorbar(i + offset, mean, yerr=ci, fmt=marker,
                  color=colors[arm.kind], capsize=3)
  ax.set_xticks(range(len(arms)),
                [f"{a.budget}: {a.kind}\n{a.bits.split(',')[0]}"
                 for a in arms], fontsize=7)
  ax.set_ylabel("validation accuracy (o Keras, s LiteRT; 95% CI)")
  ax.set_title(f"{setup.model} on {setup.dataset}: allocated vs uniform vs "
               "first/last-8 rule")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
