"""`kqreg_textures`: procedurally generated 32x32x3 shapes-and-textures dataset.

Each class is a shape or a textured patch (disc, square, triangle, ring, cross,
diamond, horizontal stripes, vertical stripes, checkerboard, dot grid) drawn at
a random position, size, tilt and colour over a background of random colour,
a random sine grating and blotchy low-frequency noise, plus pixel noise. The
gratings look like stripes and the foreground sometimes nearly matches the
background, so classes overlap: a small CNN fits a few hundred training images
but does not generalise perfectly, which is what quantization studies need.

Everything is drawn with `np.random.default_rng(seed)` with one fixed seed per
split, so the dataset is identical on every machine and needs no network.
"""

from typing import Dict, Iterator, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow_datasets as tfds

from kqreg.data.offline import OfflineBuilder

IMAGE_SIZE = 32
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
CLASS_NAMES = ("disc", "square", "triangle", "ring", "cross", "diamond",
               "h_stripes", "v_stripes", "checker", "dots")
NUM_CLASSES = len(CLASS_NAMES)
SPLIT_SIZES = {"train": 3000, "validation": 1000, "test": 1000}
# Each split has its own seed so the splits are independent draws.
SPLIT_SEEDS = {"train": 1_000_003, "validation": 2_000_003, "test": 3_000_017}

# Pixel-centre coordinates, broadcast against per-image (n, 1, 1) parameters.
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def _uniform(rng: np.random.Generator, low: float, high: float,
             n: int) -> np.ndarray:
  return rng.uniform(low, high, n).astype(np.float32)[:, None, None]


def _shape_masks(label: int, rng: np.random.Generator, n: int) -> np.ndarray:
  """(n, 32, 32) float32 masks in [0, 1] for `n` images of class `label`."""
  cx = _uniform(rng, 10.0, 22.0, n)
  cy = _uniform(rng, 10.0, 22.0, n)
  r = _uniform(rng, 6.0, 10.5, n)
  tilt = _uniform(rng, -0.35, 0.35, n)
  dx0, dy0 = _XX - cx, _YY - cy
  # Tilted coordinates, so squares, crosses and stripes are not axis-aligned.
  dx = dx0 * np.cos(tilt) + dy0 * np.sin(tilt)
  dy = -dx0 * np.sin(tilt) + dy0 * np.cos(tilt)
  dist = np.sqrt(dx * dx + dy * dy)
  patch = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
  period = rng.integers(3, 5, n).astype(np.float32)[:, None, None]
  phase = _uniform(rng, 0.0, 4.0, n)
  name = CLASS_NAMES[label]
  if name == "disc":
    mask = dist <= r
  elif name == "square":
    mask = patch
  elif name == "triangle":
    mask = (dy >= -r) & (dy <= 0.75 * r) & (np.abs(dx) <= 0.6 * (dy + r))
  elif name == "ring":
    mask = (dist <= r) & (dist >= 0.55 * r)
  elif name == "cross":
    arm = r / 3.5
    mask = (((np.abs(dx) <= arm) & (np.abs(dy) <= r))
            | ((np.abs(dy) <= arm) & (np.abs(dx) <= r)))
  elif name == "diamond":
    mask = np.abs(dx) + np.abs(dy) <= 1.1 * r
  elif name == "h_stripes":
    mask = patch & (np.mod(dy + phase, period) < period / 2)
  elif name == "v_stripes":
    mask = patch & (np.mod(dx + phase, period) < period / 2)
  elif name == "checker":
    cells = np.floor((dx + phase) / period) + np.floor((dy + phase) / period)
    mask = patch & (np.mod(cells, 2) == 0)
  else:  # dots
    grid = period + 1.0
    ox = np.mod(dx + phase, grid) - grid / 2
    oy = np.mod(dy + phase, grid) - grid / 2
    mask = patch & (ox * ox + oy * oy <= (0.3 * grid) ** 2)
  return mask.astype(np.float32)


def _backgrounds(rng: np.random.Generator, n: int) -> np.ndarray:
  """(n, 32, 32, 3) float32: colour + sine grating + blotches."""
  colour = rng.uniform(0.1, 0.9, (n, 1, 1, 3)).astype(np.float32)
  theta = _uniform(rng, 0.0, np.pi, n)
  freq = _uniform(rng, 0.05, 0.35, n)
  shift = _uniform(rng, 0.0, 2 * np.pi, n)
  wave = np.sin(2 * np.pi * freq * (_XX * np.cos(theta) + _YY * np.sin(theta))
                + shift)
  amplitude = rng.uniform(0.0, 0.15, (n, 1, 1, 3)).astype(np.float32)
  blotches = rng.normal(0.0, 0.08, (n, 4, 4, 3)).astype(np.float32)
  blotches = blotches.repeat(8, axis=1).repeat(8, axis=2)
  return colour + amplitude * wave[..., None] + blotches


def generate(n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
  """Returns `n` images (n, 32, 32, 3) uint8 and labels (n,) int64.

  Deterministic in (n, seed); classes are balanced to within one image.
  """
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
  images = _backgrounds(rng, n)
  foreground = rng.uniform(0.0, 1.0, (n, 1, 1, 3)).astype(np.float32)
  # Opacity below 1 lets the background texture show through the shape.
  alpha = rng.uniform(0.55, 1.0, (n, 1, 1, 1)).astype(np.float32)
  for label in range(NUM_CLASSES):
    index = np.flatnonzero(labels == label)
    mask = _shape_masks(label, rng, len(index))[..., None] * alpha[index]
    images[index] = images[index] * (1 - mask) + foreground[index] * mask
  sigma = rng.uniform(0.02, 0.1, (n, 1, 1, 1)).astype(np.float32)
  images += sigma * rng.standard_normal(images.shape, dtype=np.float32)
  images = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
  return images, labels


class KqregTextures(OfflineBuilder):
  """Procedural 32x32x3 shapes and textures, 10 classes."""

  name = "kqreg_textures"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.image_classification_info(
        ("Procedurally generated 32x32x3 images of 10 shape/texture classes "
         f"({', '.join(CLASS_NAMES)}) on noisy textured backgrounds. "
         "Deterministic (fixed seed per split); prepares offline."),
        IMAGE_SHAPE, class_names=CLASS_NAMES)

  def _split_generators(self, dl_manager):
    """Returns SplitGenerators; nothing is downloaded."""
    del dl_manager  # Generated locally.
    return {
        split: self._generate_examples(size, SPLIT_SEEDS[split])
        for split, size in SPLIT_SIZES.items()
    }

  def _generate_examples(self, n: int, seed: int) -> Iterator[Tuple[int, Dict]]:
    """Yields `n` examples generated from `seed`, keyed by position."""
    images, labels = generate(n, seed)
    for key, (image, label) in enumerate(zip(images, labels)):
      yield key, {"image": image, "label": int(label)}
