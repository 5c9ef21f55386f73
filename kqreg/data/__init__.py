"""Datasets for kqreg: TFDS loading, offline datasets and input pipelines.

Importing this package registers the offline TFDS builders `kqreg_digits`,
`kqreg_mnist` and `kqreg_textures`, which prepare without network access.
`splits` / `load_splits` are the one rule for train / validation / test;
`with_label_noise` corrupts a seeded fraction of training labels.
"""

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)

from kqreg.data.core import (OFFLINE_DATASETS, ClassificationInfo,
                             DatasetError, SplitData, Splits, count_examples,
                             load,
                             load_splits, pipeline, shuffle_and_augment,
                             splits, validation_split)
from kqreg.data.label_noise import (LabelNoiseRecord, corrupt_labels,
                                    with_label_noise)

__all__ = [
    "OFFLINE_DATASETS",
    "ClassificationInfo",
    "DatasetError",
    "LabelNoiseRecord",
    "SplitData",
    "Splits",
    "corrupt_labels",
    "count_examples",
    "load",
    "load_splits",
    "pipeline",
    "shuffle_and_augment",
    "splits",
    "validation_split",
    "with_label_noise",
]
