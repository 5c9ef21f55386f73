"""`kqreg_digits`: scikit-learn's bundled handwritten digits as a TFDS dataset.

The 1,797 real 8x8 digits (16 gray levels) ship inside scikit-learn, so the
dataset prepares without network access. Images are upsampled to 32x32x1 by
nearest-neighbour (each pixel becomes a 4x4 block) so CIFAR-sized models take
them unchanged, and split into fixed stratified train / validation / test sets.
"""

from typing import Dict, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow_datasets as tfds

from kqreg.data.offline import ArrayImageBuilder

IMAGE_SHAPE = (32, 32, 1)
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 1097, "validation": 350, "test": 350}

# Changing the seed changes the splits, so it is part of the dataset version.
_SPLIT_SEED = 20240607
_UPSAMPLE = IMAGE_SHAPE[0] // 8
_MAX_GRAY = 16  # load_digits pixel values are 0..16.


def split_indices() -> Dict[str, np.ndarray]:
  """Indices into `load_digits()` for each split: stratified and fixed."""
  from sklearn import datasets
  from sklearn import model_selection

  labels = datasets.load_digits().target
  index = np.arange(len(labels))
  rest, test = model_selection.train_test_split(
      index, test_size=SPLIT_SIZES["test"], stratify=labels,
      random_state=_SPLIT_SEED)
  train, validation = model_selection.train_test_split(
      rest, test_size=SPLIT_SIZES["validation"], stratify=labels[rest],
      random_state=_SPLIT_SEED + 1)
  return {"train": np.sort(train), "validation": np.sort(validation),
          "test": np.sort(test)}


def upsample(images: np.ndarray) -> np.ndarray:
  """(N, 8, 8) gray levels 0..16 -> (N, 32, 32, 1) uint8 in 0..255."""
  scaled = np.rint(images.astype(np.float64) * (255.0 / _MAX_GRAY))
  big = scaled.repeat(_UPSAMPLE, axis=1).repeat(_UPSAMPLE, axis=2)
  return big.astype(np.uint8)[..., np.newaxis]


class KqregDigits(ArrayImageBuilder):
  """scikit-learn's 8x8 handwritten digits, upsampled to 32x32x1."""

  name = "kqreg_digits"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.image_classification_info(
        ("The 1,797 8x8 handwritten digits bundled with scikit-learn "
         "(UCI optdigits test set), upsampled to 32x32x1 uint8, with fixed "
         "stratified train/validation/test splits of "
         f"{SPLIT_SIZES['train']}/{SPLIT_SIZES['validation']}/"
         f"{SPLIT_SIZES['test']}. Prepares offline."),
        IMAGE_SHAPE, num_classes=NUM_CLASSES,
        homepage="https://scikit-learn.org/stable/modules/generated/"
                 "sklearn.datasets.load_digits.html")

  def _arrays(self) -> Tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    return upsample(digits.images), digits.target.astype(np.int64)

  def _split_indices(self) -> Dict[str, np.ndarray]:
    return split_indices()
