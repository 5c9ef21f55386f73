"""Model zoo: small baselines, CIFAR ResNets and tf_keras.applications.

`build(name, input_shape, num_classes)` returns a Functional tf_keras model
with explicitly, uniquely named layers (for bit policies) and logit outputs.
`MODELS` holds the presets; `describe()` prints them with parameter counts.
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.classification.models.presets import MODELS
from kqreg.classification.models.registry import (ModelOptionError, UnknownModelError,
                                   build, describe)

__all__ = ["MODELS", "ModelOptionError", "UnknownModelError", "build",
           "describe"]
