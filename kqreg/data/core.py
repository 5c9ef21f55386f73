"""Loads classification datasets from TFDS and builds tf.data input pipelines.

`load` goes through `tfds.builder` / `as_dataset` like `tfds.load`, so
`tfds.testing.mock_data` works for real datasets. Only the offline `kqreg_*`
datasets are prepared here; this machine cannot download anything else.
"""

import dataclasses
from typing import Callable, Dict, NamedTuple, Optional, Tuple, TypeVar

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tensorflow_datasets as tfds

# Importing the builder modules registers them with TFDS.
from kqreg.data import digits  # noqa: F401
from kqreg.data import mnist  # noqa: F401
from kqreg.data import textures  # noqa: F401

OFFLINE_DATASETS: Tuple[str, ...] = ("kqreg_digits", "kqreg_mnist",
                                     "kqreg_textures")

# Pixels CIFAR-style augmentation pads on each side before the random crop.
_AUGMENT_PAD = 4
# Shuffle buffer cap: whole-split shuffles for CIFAR-sized data, bounded memory.
_MAX_SHUFFLE_BUFFER = 50_000
# Share of train held out for validation when a dataset has no validation split.
_HOLDOUT_PERCENT = 10


InfoT = TypeVar("InfoT")


class DatasetError(ValueError):
  """Unknown dataset, dataset not prepared, unknown split or bad argument."""


@dataclasses.dataclass(frozen=True)
class ClassificationInfo:
  """What a model needs to know about a supervised image dataset.

  `splits` maps split name to number of examples; it is empty when TFDS does
  not know the splits (e.g. under `tfds.testing.mock_data`).
  """

  name: str
  num_classes: int
  image_shape: Tuple[int, int, int]
  splits: Dict[str, int]


def _offline_hint() -> str:
  return ("Datasets that prepare offline: "
          f"{', '.join(OFFLINE_DATASETS)}.")


def _builder(name: str, data_dir: Optional[str], example: str,
             hint: str) -> tfds.core.DatasetBuilder:
  if not isinstance(name, str) or not name:
    raise DatasetError(f"name={name!r}: pass a TFDS dataset name such as "
                       f"{example!r}. {hint}")
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetError(
        f"Unknown dataset {name!r}: TFDS has no builder of that name. "
        f"{hint}") from None
  except ValueError as e:
    # Malformed name or unknown config: TFDS explains which.
    raise DatasetError(f"name={name!r}: {e} {hint}") from None
  except AssertionError as e:
    # TFDS asserts when a requested version does not exist.
    if "cannot be loaded at version" not in str(e):
      raise
    raise DatasetError(f"name={name!r}: {e} {hint}") from None


def _data_root(builder: tfds.core.DatasetBuilder,
               data_dir: Optional[str]) -> str:
  root = getattr(builder, "data_dir_root", None)
  return str(root) if root is not None else str(data_dir)


def _split_names(split: str) -> Tuple[str, ...]:
  """Base split names in a TFDS split string like 'train[:10%]+test'."""
  return tuple(part.split("[", 1)[0].strip() for part in split.split("+"))


def _info(builder: tfds.core.DatasetBuilder) -> ClassificationInfo:
  info = builder.info
  if not info.supervised_keys:
    raise DatasetError(
        f"Dataset {builder.name!r} has no supervised (image, label) keys; "
        "pass an image classification dataset.")
  image_key, label_key = info.supervised_keys[:2]
  label = info.features[label_key]
  num_classes = getattr(label, "num_classes", None)
  image_shape = tuple(info.features[image_key].shape)
  if num_classes is None or len(image_shape) != 3:
    raise DatasetError(
        f"Dataset {builder.name!r} is not image classification (label "
        f"{label_key!r}, image shape {image_shape}); pass a dataset with "
        "HxWxC images and a ClassLabel.")
  splits = {str(k): int(v.num_examples) for k, v in info.splits.items()}
  return ClassificationInfo(name=builder.name, num_classes=int(num_classes),
                            image_shape=image_shape, splits=splits)


def load(name: str, split: str, *, data_dir: Optional[str] = None
         ) -> Tuple[tf.data.Dataset, ClassificationInfo]:
  """Returns (image uint8 HxWxC, label int64) examples and dataset info.

  Offline `kqreg_*` datasets are prepared on first use, without network.
  Other TFDS datasets (mnist, cifar10, ...) must already be prepared in
  `data_dir` (TFDS' default directory if None).

  Args:
    name: TFDS name, e.g. "cifar10" or "kqreg_digits" (may carry a
      ":version" or "/config" as in `tfds.load`).
    split: TFDS split string, e.g. "train", "test" or "train[:1000]".
    data_dir: TFDS data directory; None means TFDS' default.

  Raises:
    DatasetError: unknown dataset, not prepared, or unknown split.
  """
  return open_split(name, split, data_dir, offline=OFFLINE_DATASETS,
                    example="cifar10", hint=_offline_hint(), describe=_info,
                    as_supervised=True)


def open_split(name: str, split: str, data_dir: Optional[str], *,
               offline: Tuple[str, ...], example: str, hint: str,
               describe: Callable[[tfds.core.DatasetBuilder], InfoT],
               as_supervised: bool = False) -> Tuple[tf.data.Dataset, InfoT]:
  """Opens a TFDS split with errors that say what to do; the body of `load`
  and of `kqreg.detection.load_detection`.

  Args:
    name, split, data_dir: as for `load`.
    offline: names prepared here on first use (they need no network).
    example: a dataset name to suggest when `name` is malformed.
    hint: appended to errors: which datasets work offline.
    describe: builder -> the task's info (with a `splits` dict), raising
      `DatasetError` when the dataset does not fit the task.
    as_supervised: passed to `as_dataset`.
  """
  builder = _builder(name, data_dir, example, hint)
  if builder.name in offline:
    try:
      builder.download_and_prepare()
    except OSError as e:
      # A data dir that cannot be created or written (read-only, virtual).
      raise DatasetError(
          f"--data_dir={_data_root(builder, data_dir)!r}: cannot prepare "
          f"{builder.name} there ({e.strerror or e}); pass a writable "
          "folder (data_dir=...).") from e
  if not isinstance(split, str) or not split:
    raise DatasetError(f"split={split!r}: pass a split name such as 'train'.")
  info = describe(builder)
  # Splits are only known once prepared (or from mocked metadata).
  if info.splits:
    unknown = [s for s in _split_names(split) if s not in info.splits]
    if unknown:
      raise DatasetError(
          f"split={split!r}: dataset {builder.name!r} has no split "
          f"{unknown[0]!r}; available splits: {', '.join(info.splits)}.")
  try:
    ds = builder.as_dataset(split=split, as_supervised=as_supervised)
  except AssertionError as e:
    if "could not find data" not in str(e):
      raise
    raise DatasetError(
        f"Dataset {name!r} is not prepared in {_data_root(builder, data_dir)} "
        "and cannot be downloaded on this machine. Prepare it on a machine "
        f"with network access (`tfds build {builder.name}`), copy the data "
        f"directory here and pass it with --data_dir (data_dir=...). {hint}"
        ) from None
  except ValueError as e:
    raise DatasetError(f"split={split!r} for dataset {builder.name!r}: {e}"
                       ) from None
  return ds, info


class Splits(NamedTuple):
  """TFDS split strings of one dataset, by `splits`' rule."""

  train: str
  validation: str
  test: Optional[str]


class SplitData(NamedTuple):
  """What `load_splits` returns; unpacks as (train, val, test, info, splits).

  `train`, `validation` and `test` are (image, label) datasets as `load`
  returns them; `test` is None when the dataset has no test split.
  """

  train: tf.data.Dataset
  validation: tf.data.Dataset
  test: Optional[tf.data.Dataset]
  info: ClassificationInfo
  splits: Splits


def splits(info: ClassificationInfo) -> Splits:
  """The one rule for what training, validation and test data are.

  * validation: the "validation" split if the dataset has one (the kqreg_*
    sets); else the last 10% of "train" ("train[90%:]"), and training uses
    the first 90% ("train[:90%]"), so validation never overlaps training and
    the test split stays unseen until the end (cifar10, mnist). "Last" is in
    the order TFDS stored the split, which it shuffled by example key when
    preparing: a fixed subset, not the dataset's last examples;
  * test: "test" if the dataset has it, else None.

  Unknown splits (`info.splits` empty, as under `tfds.testing.mock_data`) are
  read as train + test, the layout of cifar10 and mnist.

  Raises:
    DatasetError: the dataset's known splits include no "train".
  """
  known = info.splits
  if known and "train" not in known:
    raise DatasetError(
        f"Dataset {info.name!r} has no 'train' split (splits: "
        f"{', '.join(known)}); kqreg trains on 'train'.")
  if "validation" in known:
    train, validation = "train", "validation"
  else:
    cut = 100 - _HOLDOUT_PERCENT
    train, validation = f"train[:{cut}%]", f"train[{cut}%:]"
  test = "test" if not known or "test" in known else None
  return Splits(train=train, validation=validation, test=test)


def validation_split(info: ClassificationInfo) -> str:
  """`splits(info).validation`: "validation", else "train[90%:]"."""
  return splits(info).validation


def load_splits(name: str, data_dir: Optional[str] = None) -> SplitData:
  """Loads train, validation and test of `name` by `splits`' rule.

  Args:
    name, data_dir: as for `load`.

  Returns:
    `SplitData(train, validation, test or None, info, splits)`: datasets as
    `load` returns them, the dataset info and the split strings used.

  Raises:
    DatasetError: as `load`, or no "train" split.
  """
  _, info = load(name, "train", data_dir=data_dir)
  rule = splits(info)
  train, _ = load(name, rule.train, data_dir=data_dir)
  validation, _ = load(name, rule.validation, data_dir=data_dir)
  test = (None if rule.test is None else
          load(name, rule.test, data_dir=data_dir)[0])
  return SplitData(train, validation, test, info, rule)


def check_positive_int(value, arg: str, allow_none: bool = False) -> None:
  """Raises `DatasetError` naming `arg` unless `value` is a positive int."""
  if allow_none and value is None:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    none = " or None" if allow_none else ""
    raise DatasetError(f"{arg}={value!r}: pass a positive integer{none}.")


def _to_float(image: tf.Tensor, label: tf.Tensor):
  return tf.image.convert_image_dtype(image, tf.float32), tf.cast(label,
                                                                  tf.int64)


def _augment(seed: tf.Tensor, example):
  """Random flip left-right, then pad-and-random-crop; stateless, seeded."""
  image, label = example
  flip_seed, crop_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  shape = tf.shape(image)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  padded = tf.image.pad_to_bounding_box(
      image, _AUGMENT_PAD, _AUGMENT_PAD, shape[0] + 2 * _AUGMENT_PAD,
      shape[1] + 2 * _AUGMENT_PAD)
  cropped = tf.image.stateless_random_crop(padded, shape, crop_seed)
  cropped.set_shape(image.shape)
  return cropped, label


def shuffle_and_augment(ds: tf.data.Dataset, seed: int,
                        augment_fn: Optional[Callable] = None,
                        max_buffer: int = _MAX_SHUFFLE_BUFFER
                        ) -> tf.data.Dataset:
  """Reshuffles `ds` every epoch and maps `augment_fn(op_seeds, example)`.

  Both are deterministic given `seed`: the shuffle is seeded, and
  `augment_fn` gets a fresh pair of stateless-op seeds per example from a
  seeded stream that is redrawn every epoch.
  """
  cardinality = int(ds.cardinality())
  buffer = cardinality if cardinality > 0 else max_buffer
  ds = ds.shuffle(min(buffer, max_buffer), seed=seed,
                  reshuffle_each_iteration=True)
  if augment_fn is None:
    return ds
  seeds = tf.data.Dataset.random(
      seed=seed, rerandomize_each_iteration=True).batch(2)
  return tf.data.Dataset.zip(seeds, ds).map(
      augment_fn, num_parallel_calls=tf.data.AUTOTUNE)


def pipeline(ds: tf.data.Dataset, *, batch_size: int, training: bool,
             augment: bool = False, seed: int = 0, take: Optional[int] = None,
             image_size: Optional[Tuple[int, int]] = None,
             cache: bool = True) -> tf.data.Dataset:
  """Batches (image uint8, label) into (float32 NHWC in [0, 1], int64 labels).

  Order: take the first `take` examples (before shuffling, so a fixed subset),
  scale to [0, 1], resize to `image_size`, cache, then for training shuffle
  (reshuffled every epoch, deterministic given `seed`) and optionally augment
  (random flip + 4-pixel pad and random crop, stateless and seeded; ignored
  when not training), batch (keeping the last partial batch) and prefetch.
  """
  check_positive_int(batch_size, "batch_size")
  check_positive_int(take, "take", allow_none=True)
  if image_size is not None:
    if (len(tuple(image_size)) != 2
        or not all(isinstance(d, int) and d > 0 for d in image_size)):
      raise DatasetError(f"image_size={image_size!r}: pass (height, width) "
                         "of positive integers, or None.")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise DatasetError(f"seed={seed!r}: pass an integer.")

  if take is not None:
    ds = ds.take(take)
  ds = ds.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
  if image_size is not None:
    size = tuple(image_size)
    ds = ds.map(
        lambda x, y: (tf.clip_by_value(tf.image.resize(x, size), 0.0, 1.0), y),
        num_parallel_calls=tf.data.AUTOTUNE)
  if cache:
    ds = ds.cache()
  if training:
    ds = shuffle_and_augment(ds, seed, _augment if augment else None)
  ds = ds.batch(batch_size, drop_remainder=False)
  return ds.prefetch(tf.data.AUTOTUNE)


def count_examples(ds: tf.data.Dataset) -> int:
  """Examples in `ds`: its cardinality, or counted when TFDS cannot tell.

  Example:
  >>> count_examples(tf.data.Dataset.range(10).filter(lambda i: i % 2 == 0))
  5
  """
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.reduce(0, lambda count, _: count + 1))
