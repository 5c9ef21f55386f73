"""Symmetric label noise: a seeded fraction of training labels set wrong.

Noisy labels make memorisation measurable (Zhang et al. 2017, "Understanding
deep learning requires rethinking generalization"): a regularizer, such as
quantization noise is claimed to be, should fit fewer of them.

`corrupt_labels` works on a label array; `with_label_noise` on an (image,
label) `tf.data.Dataset` before batching, for training splits only.
"""

import hashlib
import numbers
from typing import Any, Dict, Optional, Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from kqreg.data.core import DatasetError, check_positive_int

__all__ = ["LabelNoiseRecord", "corrupt_labels", "indices_sha256",
           "with_label_noise"]

# Record of one corruption, JSON-ready for result.json. Keys: `fraction`
# (as asked), `count` (labels changed), `examples` (labels considered),
# `num_classes`, `seed`, `indices_sha256` (`indices_sha256` of the changed
# positions).
LabelNoiseRecord = Dict[str, Any]


def indices_sha256(indices: np.ndarray) -> str:
  """SHA-256 hex of the sorted indices as little-endian int64 bytes."""
  ordered = np.sort(np.asarray(indices, dtype=np.int64).ravel())
  return hashlib.sha256(ordered.astype("<i8").tobytes()).hexdigest()


def _check(labels: np.ndarray, fraction: float, num_classes: int,
           seed: int) -> None:
  if (isinstance(fraction, bool) or not isinstance(fraction, numbers.Real)
      or not 0 <= fraction < 1):
    raise DatasetError(f"fraction={fraction!r}: pass the fraction of labels "
                       "to corrupt, a number in [0, 1).")
  if (isinstance(num_classes, bool)
      or not isinstance(num_classes, numbers.Integral) or num_classes < 2):
    raise DatasetError(f"num_classes={num_classes!r}: pass an integer >= 2 "
                       "(a wrong label needs another class).")
  if (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
      or seed < 0):
    raise DatasetError(f"seed={seed!r}: pass a non-negative integer.")
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DatasetError(f"labels: pass a 1-D integer array, got shape "
                       f"{labels.shape} of {labels.dtype}.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DatasetError(
        f"labels lie in [{labels.min()}, {labels.max()}], outside "
        f"[0, num_classes={num_classes}).")


def corrupt_labels(labels: np.ndarray, fraction: float, num_classes: int,
                   seed: int) -> Tuple[np.ndarray, LabelNoiseRecord]:
  """Replaces round(fraction * n) labels, chosen by `seed`, by another class.

  With `rng = np.random.default_rng(seed)`: the positions are
  `rng.choice(n, count, replace=False)`, then each new label is
  `(old + rng.integers(1, num_classes)) % num_classes`, uniform over the
  other classes, so every chosen label changes. `count` is Python's
  `round(fraction * n)` (ties to even).

  Args:
    labels: (n,) integer class ids in [0, num_classes).
    fraction: share of labels to change, in [0, 1).
    num_classes: number of classes, >= 2.
    seed: non-negative integer; same seed and labels, same result.

  Returns:
    (noisy labels, same dtype as `labels`; a JSON-ready record with
    `fraction`, `count`, `examples`, `num_classes`, `seed`, `indices_sha256`).

  Raises:
    DatasetError (a ValueError): an argument out of range, naming it.
  """
  labels = np.asarray(labels)
  _check(labels, fraction, num_classes, seed)
  n = labels.size
  count = round(fraction * n)
  rng = np.random.default_rng(seed)
  index = rng.choice(n, size=count, replace=False)
  shift = rng.integers(1, num_classes, size=count)
  noisy = labels.copy()
  noisy[index] = (labels[index] + shift) % num_classes
  record = {"fraction": float(fraction), "count": int(count),
            "examples": int(n), "num_classes": int(num_classes),
            "seed": int(seed),
            "indices_sha256": indices_sha256(index)}
  return noisy, record


def with_label_noise(ds: tf.data.Dataset, fraction: float, num_classes: int,
                     seed: int, *, take: Optional[int] = None
                     ) -> Tuple[tf.data.Dataset, LabelNoiseRecord]:
  """`corrupt_labels` applied to an unbatched (image, label) dataset.

  Reads the labels once, corrupts them, and returns a dataset yielding the
  same images with the noisy labels. `ds` must yield its examples in the same
  order every pass (TFDS splits do, with `shuffle_files=False`, as
  `kqreg.data.load` reads them); a pass in another order fails with
  InvalidArgumentError. Apply it to the training split only, before
  `pipeline` (so shuffling, caching and augmentation see the noisy labels).

  Args:
    ds: (image, label) examples, not batched.
    fraction, num_classes, seed: as for `corrupt_labels`.
    take: if given, only the first `take` examples (the `train_examples` a
      run uses) are kept and corrupted, as `pipeline(take=...)` keeps them.

  Returns:
    (dataset, record); the dataset is `ds` (after `take`) when no label
    changes.

  Raises:
    DatasetError (a ValueError): a bad argument, named; an infinite `ds`.
  """
  # Arguments first: reading the labels is a pass over the images.
  _check(np.zeros(0, np.int64), fraction, num_classes, seed)
  check_positive_int(take, "take", allow_none=True)
  if take is not None:
    ds = ds.take(take)
  if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
    raise DatasetError("ds is infinite: pass a finite (image, label) dataset "
                       "(label noise is drawn over all of its labels).")
  label_batches = ds.map(lambda image, label: label).batch(4096)
  batches = list(label_batches.as_numpy_iterator())
  clean = (np.concatenate(batches) if batches else np.zeros(0, np.int64))
  noisy, record = corrupt_labels(clean, fraction, num_classes, seed)
  if record["count"] == 0:
    return ds, record
  clean_t = tf.constant(clean)
  noisy_t = tf.constant(noisy)

  def relabel(position, example):
    image, label = example
    check = tf.debugging.assert_equal(
        tf.cast(label, clean_t.dtype), clean_t[position],
        message="with_label_noise: ds changed its order between passes")
    with tf.control_dependencies([check]):
      return image, tf.cast(noisy_t[position], label.dtype)

  noisy_ds = ds.enumerate().map(relabel, num_parallel_calls=tf.data.AUTOTUNE)
  return noisy_ds, record
