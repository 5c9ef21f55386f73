"""Tests for kqreg.data: offline TFDS builders, load() and pipeline()."""

import hashlib

import kqreg.data
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kqreg.data import textures

_SHAPES = {"kqreg_digits": (32, 32, 1), "kqreg_textures": (32, 32, 3)}
_SPLITS = {
    "kqreg_digits": {"train": 1097, "validation": 350, "test": 350},
    "kqreg_textures": {"train": 3000, "validation": 1000, "test": 1000},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One prepared data dir shared by the module: preparing costs seconds."""
  return str(tmp_path_factory.mktemp("tfds"))


def _arrays(ds):
  images, labels = zip(*tfds.as_numpy(ds))
  return np.stack(images), np.array(labels)


def _digest(ds) -> str:
  images, labels = _arrays(ds)
  return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


def _labels_per_epoch(ds, epochs=2):
  return [np.concatenate([y for _, y in tfds.as_numpy(ds)])
          for _ in range(epochs)]


@pytest.mark.parametrize("name", kqreg.data.OFFLINE_DATASETS)
def test_offline_dataset_prepares_with_documented_splits(name, data_dir):
  ds, info = kqreg.data.load(name, "train", data_dir=data_dir)
  assert info == kqreg.data.ClassificationInfo(
      name=name, num_classes=10, image_shape=_SHAPES[name],
      splits=_SPLITS[name])
  assert kqreg.data.validation_split(info) == "validation"
  for split, size in _SPLITS[name].items():
    ds, _ = kqreg.data.load(name, split, data_dir=data_dir)
    images, labels = _arrays(ds)
    assert images.shape == (size,) + _SHAPES[name]
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(10))
    assert images.max() > 200  # Scaled to 0..255, not left at 0..16.


@pytest.mark.parametrize("name,split", [("kqreg_digits", "train"),
                                        ("kqreg_textures", "test")])
def test_offline_dataset_is_deterministic(name, split, data_dir, tmp_path):
  first, _ = kqreg.data.load(name, split, data_dir=data_dir)
  second, _ = kqreg.data.load(name, split, data_dir=str(tmp_path))
  assert _digest(first) == _digest(second)


def test_tfds_load_finds_registered_builders(data_dir):
  ds = tfds.load("kqreg_digits", split="test", data_dir=data_dir)
  assert int(ds.cardinality()) == 350


def test_digits_splits_are_disjoint_and_stratified():
  from kqreg.data import digits
  index = digits.split_indices()
  all_index = np.concatenate(list(index.values()))
  assert len(all_index) == len(set(all_index.tolist())) == 1797
  from sklearn import datasets
  labels = datasets.load_digits().target
  counts = np.bincount(labels[index["test"]], minlength=10)
  assert counts.min() >= 33 and counts.max() <= 37


def test_textures_generation_is_seeded_and_balanced():
  images, labels = textures.generate(100, seed=7)
  again, labels_again = textures.generate(100, seed=7)
  other, _ = textures.generate(100, seed=8)
  assert images.shape == (100, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, again)
  np.testing.assert_array_equal(labels, labels_again)
  assert not np.array_equal(images, other)
  assert np.bincount(labels).tolist() == [10] * 10


def test_pipeline_scales_batches_and_takes(data_dir):
  ds, _ = kqreg.data.load("kqreg_digits", "validation", data_dir=data_dir)
  batches = list(tfds.as_numpy(
      kqreg.data.pipeline(ds, batch_size=32, training=False, take=70)))
  assert [len(x) for x, _ in batches] == [32, 32, 6]
  x, y = batches[0]
  assert x.dtype == np.float32 and y.dtype == np.int64
  assert x.shape[1:] == (32, 32, 1)
  assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
  # Evaluation order is the dataset's order.
  raw = np.array([y for _, y in tfds.as_numpy(ds.take(70))])
  np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), raw)


def test_pipeline_resizes(data_dir):
  ds, _ = kqreg.data.load("kqreg_digits", "test", data_dir=data_dir)
  x, _ = next(iter(kqreg.data.pipeline(ds, batch_size=4, training=False,
                                       image_size=(16, 24))))
  assert x.shape == (4, 16, 24, 1)
  assert float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 1.0


def test_training_shuffle_is_seeded_fixed_subset_and_reshuffles(data_dir):
  ds, _ = kqreg.data.load("kqreg_digits", "train", data_dir=data_dir)
  kwargs = dict(batch_size=16, training=True, take=100)
  a = _labels_per_epoch(kqreg.data.pipeline(ds, seed=1, **kwargs))
  b = _labels_per_epoch(kqreg.data.pipeline(ds, seed=1, **kwargs))
  c = _labels_per_epoch(kqreg.data.pipeline(ds, seed=2, **kwargs))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])
  assert not np.array_equal(a[0], a[1])  # Reshuffled every epoch.
  subset = np.array([y for _, y in tfds.as_numpy(ds.take(100))])
  for labels in a + c:  # Always the same 100 examples.
    np.testing.assert_array_equal(np.sort(labels), np.sort(subset))


def test_augmentation_keeps_shape_and_is_seeded(data_dir):
  ds, _ = kqreg.data.load("kqreg_textures", "train", data_dir=data_dir)
  kwargs = dict(batch_size=25, training=True, take=50, augment=True)

  def images(seed):
    return [np.concatenate([x for x, _ in tfds.as_numpy(pipe)])
            for pipe in [kqreg.data.pipeline(ds, seed=seed, **kwargs)] * 2]

  a, b, c = images(3), images(3), images(4)
  assert a[0].shape == (50, 32, 32, 3) and a[0].dtype == np.float32
  assert a[0].min() >= 0.0 and a[0].max() <= 1.0
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])
  # Augmentation changed pixels: the padded crop leaves zero borders somewhere.
  plain = kqreg.data.pipeline(ds, batch_size=25, training=False, take=50)
  plain = np.concatenate([x for x, _ in tfds.as_numpy(plain)])
  assert not np.array_equal(np.sort(a[0], axis=None), np.sort(plain, axis=None))
  assert (a[0] == 0).all(axis=(1, 3)).any()


@pytest.mark.parametrize("name,shape", [("cifar10", (32, 32, 3)),
                                        ("mnist", (28, 28, 1))])
def test_real_dataset_through_mock_data(name, shape, tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    ds, info = kqreg.data.load(name, "train", data_dir=str(tmp_path))
    assert info.name == name and info.num_classes == 10
    assert info.image_shape == shape
    batches = list(kqreg.data.pipeline(ds, batch_size=8, training=True,
                                       augment=True))
  assert [int(x.shape[0]) for x, _ in batches] == [8, 8, 4]
  x, y = batches[0]
  assert tuple(x.shape[1:]) == shape and x.dtype == tf.float32
  assert y.dtype == tf.int64


@pytest.mark.parametrize("name", ["no_such_dataset", "Bad Name!",
                                  "kqreg_digits:9.0.0", "mnist/no_config"])
def test_unknown_dataset(name, tmp_path):
  with pytest.raises(kqreg.data.DatasetError, match="kqreg_digits"):
    kqreg.data.load(name, "train", data_dir=str(tmp_path))


def test_unknown_split(data_dir):
  with pytest.raises(kqreg.data.DatasetError,
                     match="train, validation, test"):
    kqreg.data.load("kqreg_digits", "valid", data_dir=data_dir)
  with pytest.raises(kqreg.data.DatasetError, match="'bogus'"):
    kqreg.data.load("kqreg_digits", "train[:10]+bogus", data_dir=data_dir)


def test_sliced_split(data_dir):
  ds, _ = kqreg.data.load("kqreg_digits", "train[:10]+test[:5]",
                          data_dir=data_dir)
  assert len(list(ds)) == 15


def test_real_dataset_not_prepared(tmp_path):
  with pytest.raises(kqreg.data.DatasetError) as error:
    kqreg.data.load("cifar10", "train", data_dir=str(tmp_path))
  message = str(error.value)
  for part in ("not prepared", str(tmp_path), "tfds build cifar10",
               "--data_dir", "kqreg_digits", "kqreg_textures"):
    assert part in message


@pytest.mark.parametrize("kwargs", [dict(take=0), dict(take=-3),
                                    dict(take=2.5), dict(batch_size=0),
                                    dict(image_size=(32,))])
def test_pipeline_rejects_bad_arguments(kwargs, data_dir):
  ds, _ = kqreg.data.load("kqreg_digits", "test", data_dir=data_dir)
  args = dict(batch_size=8, training=False)
  args.update(kwargs)
  with pytest.raises(kqreg.data.DatasetError, match=next(iter(kwargs))):
    kqreg.data.pipeline(ds, **args)


def test_validation_split_falls_back_to_test():
  info = kqreg.data.ClassificationInfo("x", 10, (32, 32, 3),
                                       {"train": 5, "test": 2})
  assert kqreg.data.validation_split(info) == "test"
