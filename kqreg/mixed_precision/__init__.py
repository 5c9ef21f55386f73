"""Mixed precision: bits per layer from the measured noise, under a budget.

  quantizable         the layers a policy can set, and their stored bytes
  sensitivity         each layer's output perturbation at each bit-width
  sensitivity_report  the sensitivity table (Markdown, CSV, heat map)
  budget              "0.15x", "120KiB", "4": parsed budgets (no Keras)
  knapsack            the multiple-choice knapsack (no TensorFlow)
  allocate            `allocate`: sensitivity + budget -> a policy string
  auto_policy         `auto:<budget>` policies resolved at run time
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.mixed_precision.allocator import Allocation, allocate, allocation
from kqreg.mixed_precision.auto_policy import AutoPolicy
from kqreg.mixed_precision.budget import Budget, parse_budget
from kqreg.mixed_precision.knapsack import solve
from kqreg.mixed_precision.quantizable import (QuantizableLayer,
                                               quantizable_layers)
from kqreg.mixed_precision.layer_sensitivity import sensitivity

__all__ = [
    "Allocation", "AutoPolicy", "Budget", "QuantizableLayer", "allocate",
    "allocation", "parse_budget", "quantizable_layers", "sensitivity",
    "solve",
]
