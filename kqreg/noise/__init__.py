"""Quantization noise: δ per weight tensor, and how it reaches the outputs.

  arrays       δ statistics from NumPy arrays (no TensorFlow, no Keras)
  statistics   `weight_noise`: the statistics of every quantized kernel
  propagation  `propagation`: measured against the first-order prediction
  first_order  the linear part of a layer, and its receptive-field energy
  callback     `NoiseAnalysisCallback`: the statistics each epoch
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.noise.arrays import delta_statistics
from kqreg.noise.callback import NOISE_CSV_COLUMNS, NoiseAnalysisCallback
from kqreg.noise.propagation_probe import PROPAGATION_KEYS, float_weights, propagation
from kqreg.noise.statistics import (WEIGHT_NOISE_KEYS, delta_values,
                                    weight_noise, weight_noise_means)

__all__ = [
    "NOISE_CSV_COLUMNS", "NoiseAnalysisCallback", "PROPAGATION_KEYS",
    "WEIGHT_NOISE_KEYS", "delta_statistics", "delta_values", "float_weights",
    "propagation", "weight_noise", "weight_noise_means",
]
