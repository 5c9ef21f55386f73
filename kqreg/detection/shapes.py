"""`kqreg_shapes`: procedurally drawn 96x96 RGB detection scenes.

Each image holds 1–6 objects of 5 classes (circle, square, triangle, cross,
diamond) at random positions, sizes (boxes of 12–48 px), tilts, colours and
opacities, over a background of random colour, a sine grating and blotchy
low-frequency noise, plus pixel noise. Objects may overlap (later ones occlude
earlier ones) but never coincide, so every box has something of its object
visible.

Features follow TFDS' VOC layout so the same pipeline reads both:
`image` and `objects: Sequence({bbox: BBoxFeature, label: ClassLabel})`, boxes
normalized (ymin, xmin, ymax, xmax) and tight around each object's full mask.

Everything is drawn with `np.random.default_rng(seed)` with one fixed seed per
split, so the dataset is identical on every machine and needs no network.
"""

from typing import Dict, Iterator, List, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow_datasets as tfds

from kqreg.data.offline import OfflineBuilder

IMAGE_SIZE = 96
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
CLASS_NAMES = ("circle", "square", "triangle", "cross", "diamond")
NUM_CLASSES = len(CLASS_NAMES)
MAX_OBJECTS = 6
SPLIT_SIZES = {"train": 2000, "validation": 500}
SPLIT_SEEDS = {"train": 7_000_001, "validation": 8_000_009}

# Pixel-centre coordinates of the image grid.
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def _mask(name: str, cx: float, cy: float, r: float,
          tilt: float) -> np.ndarray:
  """(H, W) bool mask of one shape of half-size `r` centred at (cx, cy)."""
  dx0, dy0 = _XX - cx, _YY - cy
  # Tilted coordinates, so squares and crosses are not always axis-aligned.
  dx = dx0 * np.cos(tilt) + dy0 * np.sin(tilt)
  dy = -dx0 * np.sin(tilt) + dy0 * np.cos(tilt)
  if name == "circle":
    return dx * dx + dy * dy <= r * r
  if name == "square":
    return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
  if name == "triangle":
    return (dy >= -r) & (dy <= 0.75 * r) & (np.abs(dx) <= 0.6 * (dy + r))
  if name == "cross":
    arm = r / 3.2
    return (((np.abs(dx) <= arm) & (np.abs(dy) <= r))
            | ((np.abs(dy) <= arm) & (np.abs(dx) <= r)))
  return np.abs(dx) + np.abs(dy) <= r  # diamond


def _background(rng: np.random.Generator) -> np.ndarray:
  """(H, W, 3) float32: colour + sine grating + blotches."""
  colour = rng.uniform(0.1, 0.9, (1, 1, 3)).astype(np.float32)
  theta, freq, shift = (rng.uniform(0.0, np.pi), rng.uniform(0.02, 0.2),
                        rng.uniform(0.0, 2 * np.pi))
  wave = np.sin(2 * np.pi * freq * (_XX * np.cos(theta) + _YY * np.sin(theta))
                + shift)
  amplitude = rng.uniform(0.0, 0.15, (1, 1, 3)).astype(np.float32)
  blotches = rng.normal(0.0, 0.08, (6, 6, 3)).astype(np.float32)
  blotches = blotches.repeat(IMAGE_SIZE // 6, 0).repeat(IMAGE_SIZE // 6, 1)
  return colour + amplitude * wave[..., None] + blotches


def _scene(rng: np.random.Generator
           ) -> Tuple[np.ndarray, List[Tuple[float, float, float, float]],
                      List[int]]:
  """One image (H, W, 3) uint8 with its normalized yxyx boxes and labels."""
  image = _background(rng)
  n = int(rng.integers(1, MAX_OBJECTS + 1))
  placed: List[Tuple[float, float, float]] = []
  boxes, labels = [], []
  for _ in range(n):
    # Rejection sampling: centres far enough apart that no object is hidden.
    for _ in range(30):
      r = float(rng.uniform(7.0, 22.0))
      cx, cy = (float(rng.uniform(r * 0.6, IMAGE_SIZE - r * 0.6))
                for _ in range(2))
      if all(np.hypot(cx - px, cy - py) > 0.7 * (r + pr)
             for px, py, pr in placed):
        break
    else:
      continue
    label = int(rng.integers(NUM_CLASSES))
    mask = _mask(CLASS_NAMES[label], cx, cy, r, float(rng.uniform(-0.4, 0.4)))
    ys, xs = np.nonzero(mask)
    if ys.size < 16:  # mostly outside the image
      continue
    placed.append((cx, cy, r))
    colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    # Opacity below 1 lets the background texture show through the shape.
    alpha = float(rng.uniform(0.6, 1.0)) * mask[..., None].astype(np.float32)
    image = image * (1 - alpha) + colour * alpha
    boxes.append((ys.min() / IMAGE_SIZE, xs.min() / IMAGE_SIZE,
                  (ys.max() + 1) / IMAGE_SIZE, (xs.max() + 1) / IMAGE_SIZE))
    labels.append(label)
  image += float(rng.uniform(0.02, 0.08)) * rng.standard_normal(
      image.shape, dtype=np.float32)
  image = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
  return image, boxes, labels


def generate(n: int, seed: int) -> Iterator[Dict]:
  """Yields `n` examples {image, objects: {bbox, label}}; deterministic."""
  rng = np.random.default_rng(seed)
  for _ in range(n):
    image, boxes, labels = _scene(rng)
    yield {"image": image,
           "objects": {"bbox": np.asarray(boxes, np.float32).reshape(-1, 4),
                       "label": np.asarray(labels, np.int64)}}


class KqregShapes(OfflineBuilder):
  """Procedural 96x96 detection scenes, 5 shape classes, 1–6 objects."""

  name = "kqreg_shapes"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Procedurally drawn 96x96x3 detection scenes: 1-6 objects of "
            f"{NUM_CLASSES} classes ({', '.join(CLASS_NAMES)}) on textured "
            "backgrounds, with tight boxes. Deterministic; prepares offline."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            }),
        }),
    )

  def _split_generators(self, dl_manager):
    """Returns SplitGenerators; nothing is downloaded."""
    del dl_manager  # Generated locally.
    return {
        split: self._generate_examples(size, SPLIT_SEEDS[split])
        for split, size in SPLIT_SIZES.items()
    }

  def _generate_examples(self, n: int, seed: int) -> Iterator[Tuple[int, Dict]]:
    """Yields `n` examples generated from `seed`, keyed by position."""
    yield from enumerate(generate(n, seed))
