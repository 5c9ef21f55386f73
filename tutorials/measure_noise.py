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
# # Measure the noise and read it
#
# Quantizing a weight w to b bits adds δ = Q(w) − w. On a uniform grid of
# step Δ, δ is roughly uniform in [−Δ/2, Δ/2], so std(δ) ≈ Δ/√12. This
# tutorial trains a small 4-bit model with the noise recorded every epoch,
# checks that model against the measured δ, follows the noise to the output,
# and compares the rounding with its noise-only twin `n4`. Under a minute on
# 2 cores.
#
# API: [`kqreg.NoiseAnalysisCallback`](../reference/kqreg.md#kqreg.NoiseAnalysisCallback),
# [`kqreg.noise.weight_noise`](../reference/noise.md#kqreg.noise.weight_noise),
# [`kqreg.noise.propagation`](../reference/noise.md#kqreg.noise.propagation).
# Guide: [noise analysis](../guides/noise.md).

# %%
import kqreg      # first: selects Keras 2 (tf_keras), which tfmot needs
import numpy as np
import pandas as pd
import tf_keras
from kqreg import noise
from sklearn.datasets import load_digits

digits = load_digits()
x = (digits.images / 16.0).astype("float32")[..., None]
y = digits.target
x_train, y_train, x_val, y_val = x[:1400], y[:1400], x[1400:], y[1400:]


def float_model():
    tf_keras.utils.set_random_seed(0)
    return tf_keras.Sequential([
        tf_keras.Input((8, 8, 1)),
        tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                               name="conv1"),
        tf_keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                               name="conv2"),
        tf_keras.layers.GlobalAveragePooling2D(name="gap"),
        tf_keras.layers.Dense(10, name="head"),
    ])


def train(policy, log_dir):
    model = kqreg.quantize(float_model(), policy)
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(tf_keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0,
              validation_data=(x_val, y_val),
              callbacks=[kqreg.NoiseAnalysisCallback(log_dir,
                                                     probe_data=x_val[:64])])
    return model

# %% [markdown]
# ## Train with the noise recorded
#
# `NoiseAnalysisCallback` writes one row per quantized weight tensor per
# epoch to `noise.csv` (and `noise.jsonl`, and TensorBoard scalars and
# histograms), plus a row `layer=output` when given a probe batch.

# %%
w4 = train("w4", "logs/w4")
rows = pd.read_csv("logs/w4/noise.csv")
columns = ["epoch", "layer", "weight_bits", "delta_std", "model_std",
           "std_ratio", "sqnr_db", "clip_fraction"]
print(rows[rows.layer != "output"][columns].to_string(index=False))

# %% [markdown]
# How to read it:
#
# - `std_ratio` = measured std(δ) / (Δ/√12). Near 1, the uniform-noise model
#   holds for that tensor. Well below 1, the weights crowd near zero and
#   many round to the same levels; check `clip_fraction` too.
# - `sqnr_db` = 20·log10(‖w‖/‖δ‖): about 6 dB more per extra bit.
# - `clip_fraction`: the share of weights just outside the stored range.
#   The range comes from the previous step's weights, so after an update a
#   channel's largest weight can sit just outside it. Conv kernels have one
#   range per output channel: `conv1` has 9 weights per channel, so one such
#   weight in every channel reads as 0.11.

# %%
last = rows[(rows.epoch == rows.epoch.max()) & (rows.layer != "output")]
assert ((last.std_ratio > 0.7) & (last.std_ratio < 1.3)).all(), last.std_ratio

# %% [markdown]
# ## More bits, less noise
#
# `weight_noise` computes the same statistics on demand. Train the float
# model, then quantize its trained weights at 2, 4 and 8 bits: the step,
# and so std(δ), halves per extra bit, and SQNR climbs about 6 dB per bit
# (at 2 bits the narrow grid has only three levels, −Δ, 0, Δ, and falls
# short of the rule).
# A fresh QAT model's weight ranges are set by its first training step, so
# one call with `training=True` sets them before measuring.

# %%
trained = float_model()
trained.compile(tf_keras.optimizers.Adam(3e-3),
                tf_keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
trained.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
sqnr = {}
for bits in (2, 4, 8):
    q = kqreg.quantize(trained, f"w{bits}")
    q(x_val[:8], training=True)   # sets each kernel's range from its weights
    stats = noise.weight_noise(q, traced=False)
    conv2 = next(s for s in stats if s["layer"].endswith("conv2"))
    sqnr[bits] = conv2["sqnr_db"]
    print(f"w{bits}: std(δ) {conv2['delta_std']:.5f}  "
          f"Δ/√12 {conv2['model_std']:.5f}  SQNR {conv2['sqnr_db']:5.1f} dB")
assert sqnr[2] < sqnr[4] < sqnr[8]

# %% [markdown]
# ## From the weights to the output
#
# `propagation` runs a probe batch with Q(w) and with the float weights and
# compares each layer's output: `measured` is ‖y_q − y‖/‖y‖ with the noise
# of all layers so far; `measured_local` the layer's own noise alone; and
# for Dense and Conv2D, `predicted` the first-order estimate of
# `measured_local` from Δ and the layer's input energy. Local agreement
# means the additive model describes that layer.

# %%
for row in noise.propagation(w4, x_val[:64]):
    predicted = row["predicted"]
    print(f"{row['layer']:>12}: measured {row['measured']:.4f}"
          + (f"  local {row['measured_local']:.4f}  predicted {predicted:.4f}"
             if predicted is not None else ""))

# %% [markdown]
# ## The noise twin
#
# `n4` gives each kernel fresh uniform noise U(−Δ/2, Δ/2) of the 4-bit step
# in every training step, never rounded, and float weights at inference. If
# quantization regularizes through its noise, `w4` and `n4` should train
# alike; a study compares them over seeds (see the
# [small study tutorial](small_study.md)). Its rows say `kind = noise` and
# clip nothing.

# %%
n4 = train("n4", "logs/n4")
twin = pd.read_csv("logs/n4/noise.csv")
twin_columns = ["epoch", "layer", "kind", "delta_std", "model_std",
                "std_ratio", "clip_fraction"]
print(twin[twin.layer != "output"][twin_columns].to_string(index=False))
assert (twin[twin.layer != "output"].kind == "noise").all()
