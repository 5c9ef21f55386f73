# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Run a small study and read its verdict
#
# A study trains the same setting under several bit policies (arms) and
# seeds, then tests every arm against full precision. This one is tiny on
# purpose: 2 arms (`fp`, `w4`), 2 seeds, 2 epochs of a small MLP on
# `kqreg_digits` (scikit-learn's real digits, offline). It shows the steps
# and how to read the report; with 2 seeds it can only detect large
# differences, and the report says so. About a minute on 2 cores.
#
# The same study from the shell (what the
# [getting-started](../getting-started.md) main job runs, with bigger
# settings from its flagfile):
#
# ```bash
# kqreg-sweep --dataset=kqreg_digits --model=mlp "--model_args={'hidden': (32,)}" \
#     --train_examples=300 --epochs=2 --sweep_bits=fp,w4 --seeds=0,1 \
#     --workers=1 --output_dir=runs/small_study
# ```
#
# API: [`kqreg.study.sweep`](../reference/study_sweep.md),
# [`kqreg.runs`](../reference/runs.md). Guide:
# [studies and how to read a verdict](../guides/studies.md).

# %%
import os

import kqreg      # first: selects Keras 2 (tf_keras), which tfmot needs
import pandas as pd
from kqreg.classification.task import ClassifyConfig
from kqreg.study.sweep import report, runner
from kqreg.study.sweep.records import RunRecord

output_dir = "runs/small_study"
arms, seeds = ["fp", "w4"], [0, 1]

# %% [markdown]
# ## One config per (arm, seed)
#
# A run is a `RunConfig`, here the classification task's. Each run gets
# its own model dir; rerunning skips finished runs and resumes interrupted
# ones.

# %%
grid = list(runner.grid(arms, seeds))
configs = [ClassifyConfig(
    model_dir=os.path.join(output_dir, "runs", f"{bits}_seed{seed}"),
    dataset="kqreg_digits", model="mlp", model_kwargs={"hidden": (32,)},
    train_examples=300, epochs=2, bits=bits, seed=seed, verbose=0)
    for bits, seed in grid]

results = runner.run_configs(configs, workers=1)   # 1: train in this process
for (bits, seed), result in zip(grid, results):
    print(f"{bits} seed {seed}: val acc {result['val_accuracy']:.3f}, "
          f"val loss {result['val_loss']:.3f}")

# %% [markdown]
# ## The report
#
# `write_report` computes the statistics and writes `report.md`,
# `results.csv`, `runs.csv`, `comparisons.csv` and the figures
# (`val_loss.png`, `gap.png`, `noise.png`), and returns the same as a
# summary.

# %%
records = [RunRecord(bits, seed, result, result.get("history", []))
           for (bits, seed), result in zip(grid, results)]
summary = report.write_report(output_dir, records, arms,
                              title="fp against w4, a tiny study")
print(summary["table"])
print()
print("\n".join(summary["verdict"]))

# %% [markdown]
# ## How to read the verdict
#
# The table gives mean ± std over seeds per arm. The verdict compares each
# arm with `fp` (and each noise twin `n<b>` with its `w<b>`) in four
# metrics: loss gap (validation − train), final validation loss, best
# validation loss and validation accuracy. The arms share seeds, so each
# comparison is paired by seed: a paired t-test on the per-seed
# differences, Holm-corrected within each metric, with a simultaneous 95%
# interval, and the exact sign-flip test as a check that needs no
# normality.
#
# Each line ends in a reading:
#
# - *differs (higher / lower)*: the Holm-adjusted p ≤ 0.05;
# - *equivalent within ±m*: a margin m was declared before the run
#   (`--equivalence_margins=val_loss:0.05`, or `margins=` here) and TOST
#   shows |difference| < m;
# - *differs but within ±m*: both;
# - *inconclusive*: neither. Not "no difference": the seeds were too few to
#   tell. With 2 seeds, as here, expect this, and the report opens with a
#   warning saying so.
#
# `comparisons.csv` holds the numbers behind each line, one row per arm and
# metric:

# %%
comparisons = pd.read_csv(os.path.join(output_dir, "comparisons.csv"))
columns = ["arm", "reference", "metric", "n", "diff", "ci_low", "ci_high",
           "p_holm", "p_sign_flip", "reading"]
print(comparisons[columns].to_string(index=False))
assert set(comparisons.arm) == {"w4"} and set(comparisons.reference) == {"fp"}
assert os.path.exists(os.path.join(output_dir, "report.md"))

# %% [markdown]
# The interval `ci_low`..`ci_high` bounds the effect: what lies outside is
# ruled out, what lies inside is not. To claim that `w4` regularizes here
# you would want more epochs (so that fp overfits: the report's
# overfitting test needs longer curves than 2 epochs), more seeds (the
# committed studies use 3–8), a declared margin, and the noise twin `n4` as
# an arm. See [Results](../results/index.md) for full-size studies.
