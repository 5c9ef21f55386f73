"""Loads TFDS detection datasets and batches them for keras-cv's YOLOV8Detector.

`load_detection` goes through `tfds.builder` / `as_dataset` like `tfds.load`,
so `tfds.testing.mock_data` works for voc/2007, voc/2012 and coco/2017. Any
dataset with an `image` and `objects: {bbox, label}` (normalized yxyx boxes,
ClassLabel) fits. Only the offline `kqreg_shapes` and `kqreg_digit_scenes`
are prepared here.

`pipeline` yields keras-cv's dense bounding-box dicts:

  {"images": float32 (B, S, S, 3) in [0, 255],
   "bounding_boxes": {"boxes": float32 (B, max_boxes, 4) xyxy pixels,
                      "classes": float32 (B, max_boxes)}}

padded with -1 (`keras_cv.bounding_box.to_dense`), which is what the
detector's `fit` / `evaluate` unpack.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tensorflow_datasets as tfds
import keras_cv

from kqreg.data.core import (DatasetError, check_positive_int, open_split,
                              shuffle_and_augment)
# Importing the builder modules registers them with TFDS.
from kqreg.detection import digit_scenes  # noqa: F401
from kqreg.detection import shapes  # noqa: F401
from kqreg.detection.autograph import trace_keras_cv_as_written

__all__ = [
    "OFFLINE_DETECTION_DATASETS",
    "DetectionInfo",
    "load_detection",
    "pipeline",
    "validation_split",
]

OFFLINE_DETECTION_DATASETS: Tuple[str, ...] = ("kqreg_shapes",
                                               "kqreg_digit_scenes")
_MAX_SHUFFLE_BUFFER = 10_000
# Random translation of training images, as a fraction of the image size.
_JITTER = 0.125
# A box cut by the translation is kept if this much of its area remains.
_MIN_VISIBLE = 0.4
_MIN_BOX_PIXELS = 1.0


@dataclasses.dataclass(frozen=True)
class DetectionInfo:
  """What a detector needs to know about a detection dataset.

  `splits` maps split name to number of examples; it is empty when TFDS does
  not know the splits (e.g. under `tfds.testing.mock_data`). `flip` is False
  for datasets whose classes a mirror image would change (digits): their
  builder sets `HORIZONTAL_FLIP = False`.
  """

  name: str
  num_classes: int
  class_names: Tuple[str, ...]
  splits: Dict[str, int]
  flip: bool = True


def _hint() -> str:
  return ("Detection datasets that prepare offline: "
          f"{', '.join(OFFLINE_DETECTION_DATASETS)}; voc/2007, voc/2012 and "
          "coco/2017 must be prepared elsewhere and passed with --data_dir.")


def _info(builder: tfds.core.DatasetBuilder) -> DetectionInfo:
  features = builder.info.features
  try:
    label = features["objects"]["label"]
    features["objects"]["bbox"]  # pylint: disable=pointless-statement
    features["image"]  # pylint: disable=pointless-statement
  except (KeyError, TypeError):
    raise DatasetError(
        f"--dataset={builder.name!r} is not an object-detection dataset (it "
        "needs 'image' and 'objects' with 'bbox' and 'label'); pass e.g. "
        f"kqreg_shapes or voc/2007. {_hint()}") from None
  names = tuple(getattr(label, "names", None) or
                (str(i) for i in range(label.num_classes)))
  splits = {str(k): int(v.num_examples)
            for k, v in builder.info.splits.items()}
  return DetectionInfo(name=builder.name, num_classes=int(label.num_classes),
                       class_names=names, splits=splits,
                       flip=bool(getattr(builder, "HORIZONTAL_FLIP", True)))


def load_detection(name: str, split: str, data_dir: Optional[str] = None
                   ) -> Tuple[tf.data.Dataset, DetectionInfo]:
  """Returns raw TFDS examples of `split` and the dataset's info.

  Args:
    name: TFDS name, e.g. "kqreg_shapes", "voc/2007", "coco/2017".
    split: TFDS split string, e.g. "train" or "validation[:100]".
    data_dir: TFDS data directory; None means TFDS' default.

  Raises:
    DatasetError: unknown, non-detection or unprepared dataset; unknown split.
  """
  return open_split(name, split, data_dir, offline=OFFLINE_DETECTION_DATASETS,
                    example="voc/2007", hint=_hint(), describe=_info)


def validation_split(info: DetectionInfo) -> str:
  """"validation" if present (or splits unknown, as under mock_data), else
  "test"."""
  if not info.splits or "validation" in info.splits:
    return "validation"
  return "test"


def _letterbox(example, size: int):
  """Resizes keeping aspect ratio, pads to size x size; xyxy pixel boxes."""
  image = tf.cast(example["image"], tf.float32)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.reduce_min(size / shape)
  new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 1)
  offset = (size - new) // 2
  image = tf.image.resize(image, new)
  image = tf.image.pad_to_bounding_box(image, offset[0], offset[1], size, size)
  image = tf.clip_by_value(image, 0.0, 255.0)
  image.set_shape((size, size, 3))
  bbox = tf.reshape(tf.cast(example["objects"]["bbox"], tf.float32), (-1, 4))
  # Canonical order: mocked data may draw ymin > ymax.
  y = tf.sort(tf.stack([bbox[:, 0], bbox[:, 2]], -1), axis=-1)
  x = tf.sort(tf.stack([bbox[:, 1], bbox[:, 3]], -1), axis=-1)
  new_f, off_f = tf.cast(new, tf.float32), tf.cast(offset, tf.float32)
  boxes = tf.stack([x[:, 0] * new_f[1] + off_f[1], y[:, 0] * new_f[0] + off_f[0],
                    x[:, 1] * new_f[1] + off_f[1], y[:, 1] * new_f[0] + off_f[0]],
                   axis=-1)
  classes = tf.cast(tf.reshape(example["objects"]["label"], (-1,)), tf.float32)
  # Real data pairs them one to one; mocked data may not.
  n = tf.minimum(tf.shape(boxes)[0], tf.shape(classes)[0])
  return image, boxes[:n], classes[:n]


def _keep_visible(boxes, classes, before=None):
  """Drops boxes under 1 px (or under `_MIN_VISIBLE` of their old area)."""
  wh = boxes[:, 2:] - boxes[:, :2]
  keep = tf.reduce_all(wh >= _MIN_BOX_PIXELS, axis=-1)
  if before is not None:
    old = tf.reduce_prod(before[:, 2:] - before[:, :2], axis=-1)
    keep &= tf.reduce_prod(wh, axis=-1) >= _MIN_VISIBLE * old
  return tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)


def _augment(seed, image, boxes, classes, size: int, flip: bool = True):
  """Random horizontal flip (if `flip`) and translation (stateless, seeded)."""
  flip_seed, shift_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  if flip:
    mirror = tf.random.stateless_uniform((), flip_seed) < 0.5
    image = tf.where(mirror, tf.reverse(image, axis=[1]), image)
    boxes = tf.where(mirror, tf.stack([size - boxes[:, 2], boxes[:, 1],
                                       size - boxes[:, 0], boxes[:, 3]], -1),
                     boxes)
  pad = int(round(size * _JITTER))
  shift = tf.random.stateless_uniform((2,), shift_seed, -pad, pad + 1,
                                      dtype=tf.int32)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  image = tf.slice(padded, tf.stack([pad - shift[0], pad - shift[1], 0]),
                   [size, size, 3])
  shift_f = tf.cast(tf.stack([shift[1], shift[0], shift[1], shift[0]]),
                    tf.float32)
  moved = boxes + shift_f
  clipped = tf.clip_by_value(moved, 0.0, float(size))
  boxes, classes = _keep_visible(clipped, classes, before=moved)
  return image, boxes, classes


def pipeline(ds: tf.data.Dataset, *, image_size: int, batch_size: int,
             training: bool, max_boxes: int = 32, augment: bool = True,
             flip: bool = True, seed: int = 0, take: Optional[int] = None,
             cache: bool = True) -> tf.data.Dataset:
  """Batches raw detection examples into keras-cv's dense box dicts.

  Order: take the first `take` examples (a fixed subset), letterbox to
  `image_size`, keep the first `max_boxes` boxes, cache, then for training
  shuffle (every epoch, deterministic given `seed`) and optionally augment
  (random horizontal flip unless `flip` is False, translation by up to 1/8
  of the image), batch as ragged and pad to `max_boxes` with -1, prefetch.

  Raises:
    DatasetError: a non-positive size, batch, max_boxes or take.
  """
  check_positive_int(image_size, "image_size")
  check_positive_int(batch_size, "batch_size")
  check_positive_int(max_boxes, "max_boxes")
  check_positive_int(take, "take", allow_none=True)
  trace_keras_cv_as_written()
  if take is not None:
    ds = ds.take(take)

  def _prepare(example):
    image, boxes, classes = _letterbox(example, image_size)
    boxes, classes = _keep_visible(boxes, classes)
    return image, boxes[:max_boxes], classes[:max_boxes]

  ds = ds.map(_prepare, num_parallel_calls=tf.data.AUTOTUNE)
  if cache:
    ds = ds.cache()
  if training:
    ds = shuffle_and_augment(
        ds, seed, (lambda s, e: _augment(s, *e, size=image_size, flip=flip))
        if augment else None, max_buffer=_MAX_SHUFFLE_BUFFER)

  def _to_dict(image, boxes, classes):
    return {"images": image,
            "bounding_boxes": {"boxes": boxes, "classes": classes}}

  ds = ds.map(_to_dict, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.ragged_batch(batch_size, drop_remainder=False)

  def _dense(batch):
    boxes = keras_cv.bounding_box.to_dense(batch["bounding_boxes"],
                                           max_boxes=max_boxes)
    return {"images": batch["images"],
            "bounding_boxes": {"boxes": boxes["boxes"],
                               "classes": boxes["classes"]}}

  ds = ds.map(_dense, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)
