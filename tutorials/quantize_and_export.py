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
# # Quantize your own model and export it
#
# Build a small Keras model, quantize it to 4-bit weights and 8-bit
# activations (8-bit first and last layers), train it for a few epochs,
# write it as an integer TFLite file and check the file in LiteRT against the
# Keras model. The data: scikit-learn's 1,797 real 8×8 digits (no network).
# Under a minute on 2 cores.
#
# API: [`kqreg.quantize`](../reference/kqreg.md#kqreg.quantize),
# [`kqreg.summary`](../reference/kqreg.md#kqreg.summary),
# [`kqreg.export_tflite`](../reference/kqreg.md#kqreg.export_tflite),
# [`kqreg.verify_tflite`](../reference/kqreg.md#kqreg.verify_tflite).
# Guides: [bit policies](../guides/bit-policies.md),
# [export and storage](../guides/export.md).

# %%
import kqreg      # first: selects Keras 2 (tf_keras), which tfmot needs
import numpy as np
import tf_keras
from sklearn.datasets import load_digits

tf_keras.utils.set_random_seed(0)
digits = load_digits()
x = (digits.images / 16.0).astype("float32")[..., None]   # (1797, 8, 8, 1)
y = digits.target
x_train, y_train, x_val, y_val = x[:1400], y[:1400], x[1400:], y[1400:]

# %% [markdown]
# ## Your model, in float
#
# Any Sequential or Functional tf_keras model works (nested sub-models too;
# subclassed models are refused with advice). Give layers names if your
# policy will refer to them.

# %%
model = tf_keras.Sequential([
    tf_keras.Input((8, 8, 1)),
    tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu",
                           name="conv1"),
    tf_keras.layers.Conv2D(32, 3, padding="same", activation="relu",
                           name="conv2"),
    tf_keras.layers.GlobalAveragePooling2D(name="gap"),
    tf_keras.layers.Dense(10, name="head"),
])

# %% [markdown]
# ## Quantize it
#
# One policy string: `w4a8` is the default for every layer with a kernel,
# `first=` and `last=` override the first and last of them. `kqreg.summary`
# prints the bits, parameters and storage per layer.

# %%
qat = kqreg.quantize(model, "w4a8,first=w8a8,last=w8a8")
profile = kqreg.summary(qat)

# %% [markdown]
# Train the QAT model as any Keras model. The forward pass uses Q(w), the
# weights on their b-bit grid; the optimizer updates the float weights
# behind them (straight-through gradients).

# %%
qat.compile(tf_keras.optimizers.Adam(3e-3),
            tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"])
history = qat.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0,
                  validation_data=(x_val, y_val))
print(f"val accuracy: {history.history['val_accuracy'][-1]:.3f}")

# %% [markdown]
# ## Export it
#
# `export_tflite` runs TFLite's plain converter with every range from QAT,
# then re-grids each kernel onto the exact Q(w) it trained with. The
# report (also written beside the file as `model.tflite.json`) reads the
# flatbuffer back: each weight tensor's storage type and distinct levels.
# `representative_data` is only used where QAT left a range missing.

# %%
report = kqreg.export_tflite(qat, "model.tflite",
                             representative_data=x_train[:64])
print(f"{report['size_bytes']} bytes, "
      f"{report['ratio_to_float']:.2f}x the float32 file")
for w in report["weights"]:
    if w["role"] == "weights":
        print(f"{w['layer']:>6}: stored {w['type']}, {w['bits']} bits")

# %% [markdown]
# The 4-bit kernel (`conv2`) is stored as packed INT4, the 8-bit ones as
# INT8. Had you asked for 3 bits, the file would store INT4 holding only
# 3-bit levels; see [export and storage](../guides/export.md).
#
# ## Check the file
#
# `verify_tflite` runs the file in LiteRT, one example at a time as on a
# device, next to the Keras model: top-1 agreement, output differences in
# output quantization steps, latency, and both accuracies with labels.

# %%
check = kqreg.verify_tflite("model.tflite", qat, x_val, labels=y_val)
print(f"top-1 agreement {check['top1_agreement']:.3f}; "
      f"max output difference {check['max_abs_diff']:.1f} output steps; "
      f"accuracy Keras {check['keras_accuracy']:.3f}, "
      f"LiteRT {check['tflite_accuracy']:.3f}")
assert check["top1_agreement"] > 0.9

# %% [markdown]
# Agreement near 1 and differences of a step or two are what to expect: the
# file computes in integers what the QAT model simulated in float. To load
# the Keras model again later, save it (`qat.save("qat.keras")`) and load
# it inside `with kqreg.quantize_scope():`.
