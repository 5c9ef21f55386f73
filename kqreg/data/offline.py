"""The base of kqreg's offline TFDS builders (data made here, not fetched)."""

import abc
from typing import Dict, Iterator, Optional, Sequence, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

__all__ = ["OfflineBuilder", "ArrayImageBuilder"]


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `GeneratorBasedBuilder` whose `_split_generators` downloads nothing.

  Subclasses set `name` and implement `_info`, `_split_generators` and
  `_generate_examples` as any TFDS builder does; they register themselves.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # TFDS derives code_path through importlib_resources, which is not
  # installed here; it only locates the (absent) checksums file.
  code_path = epath.Path(__file__)

  def image_classification_info(
      self, description: str, image_shape: Tuple[int, int, int], *,
      num_classes: Optional[int] = None,
      class_names: Optional[Sequence[str]] = None,
      homepage: Optional[str] = None) -> tfds.core.DatasetInfo:
    """The `DatasetInfo` of an (image, label) set: what `_info` returns."""
    label = (tfds.features.ClassLabel(names=list(class_names)) if class_names
             else tfds.features.ClassLabel(num_classes=num_classes))
    return tfds.core.DatasetInfo(
        builder=self, description=description,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=image_shape), "label": label}),
        supervised_keys=("image", "label"), homepage=homepage)


class ArrayImageBuilder(OfflineBuilder, skip_registration=True):
  """An offline (image, label) set held in arrays a package ships.

  Subclasses implement `_arrays()` (all images and labels) and
  `_split_indices()` (split name -> indices into them); examples are keyed
  by their index, so a split is the same set whatever the order.
  """

  @abc.abstractmethod
  def _arrays(self) -> Tuple[np.ndarray, np.ndarray]:
    """All images (N, H, W, C) uint8 and labels (N,) int."""

  @abc.abstractmethod
  def _split_indices(self) -> Dict[str, np.ndarray]:
    """Split name -> indices into `_arrays()`."""

  def _split_generators(self, dl_manager):
    """Returns SplitGenerators; nothing is downloaded."""
    del dl_manager  # the arrays ship with a package
    images, labels = self._arrays()
    return {split: self._generate_examples(images[index], labels[index], index)
            for split, index in self._split_indices().items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                         index: np.ndarray) -> Iterator[Tuple[int, dict]]:
    for key, image, label in zip(index, images, labels):
      yield int(key), {"image": image, "label": int(label)}
