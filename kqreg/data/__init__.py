"""Datasets for kqreg: TFDS loading, offline datasets and input pipelines.

Importing this package registers the offline TFDS builders `kqreg_digits` and
`kqreg_textures`, which prepare without network access.
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.data.core import (OFFLINE_DATASETS, ClassificationInfo,
                             DatasetError, load, pipeline,
                             shuffle_and_augment, validation_split)

__all__ = [
    "OFFLINE_DATASETS",
    "ClassificationInfo",
    "DatasetError",
    "load",
    "pipeline",
    "shuffle_and_augment",
    "validation_split",
]
