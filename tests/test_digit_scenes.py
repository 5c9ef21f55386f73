"""kqreg_digit_scenes: real MNIST digits composed into detection scenes."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kqreg import detection
from kqreg.data import mnist
from kqreg.detection import data as detection_data
from kqreg.detection import digit_scenes

import trainer_process  # tests/trainer_process.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A fresh TFDS folder the builder prepares in, offline."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def prepared(data_dir):
  """Every split of the prepared dataset, read."""
  splits = {}
  for split in digit_scenes.SPLIT_SIZES:
    ds, info = detection.load_detection("kqreg_digit_scenes", split, data_dir)
    splits[split] = list(tfds.as_numpy(ds))
  return info, splits


def test_builder_prepares_offline_with_the_shapes_layout(prepared):
  info, splits = prepared
  assert info.splits == digit_scenes.SPLIT_SIZES
  assert info.num_classes == 10 and info.class_names == tuple("0123456789")
  assert not info.flip  # mirrored digits are no digits
  example = splits["validation"][0]
  assert example["image"].shape == digit_scenes.IMAGE_SHAPE
  assert example["image"].dtype == np.uint8
  assert set(example["objects"]) == {"bbox", "label", "source"}


def test_splits_draw_from_disjoint_source_digits(prepared):
  _, splits = prepared
  used = {split: np.unique(np.concatenate(
      [e["objects"]["source"] for e in examples]))
          for split, examples in splits.items()}
  pools = mnist.split_indices()
  for split, sources in used.items():
    assert np.isin(sources, pools[split]).all(), split
  assert not set(used["train"]) & set(used["validation"])
  assert not set(used["train"]) & set(used["test"])
  assert not set(used["validation"]) & set(used["test"])
  # Pools are cycled, so nearly every validation digit is used (a few
  # draws find no free spot and are skipped).
  assert len(used["validation"]) >= 0.95 * len(pools["validation"])


def test_prepared_boxes_lie_in_the_image_and_labels_match_digits(prepared):
  _, splits = prepared
  _, source_labels = mnist.source()
  for examples in splits.values():
    boxes = np.concatenate([e["objects"]["bbox"] for e in examples])
    labels = np.concatenate([e["objects"]["label"] for e in examples])
    sources = np.concatenate([e["objects"]["source"] for e in examples])
    assert boxes.min() >= 0 and boxes.max() <= 1
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    np.testing.assert_array_equal(labels, source_labels[sources])
    counts = [len(e["objects"]["label"]) for e in examples]
    assert 1 <= min(counts) and max(counts) <= digit_scenes.MAX_DIGITS


def test_boxes_are_tight_around_each_digits_ink():
  pool = digit_scenes.digit_pool("train")[:50]
  scenes = list(digit_scenes.scenes(12, seed=5, pool=pool))
  for scene in scenes:
    size = digit_scenes.IMAGE_SIZE
    for box, mask in zip(scene.boxes, scene.masks):
      y0, x0, y1, x1 = np.rint(box * size).astype(int)
      assert mask.any()
      inside = np.zeros_like(mask)
      inside[y0:y1, x0:x1] = True
      assert not (mask & ~inside).any()  # covers all the ink
      # ...and no more: ink on every edge of the box.
      assert mask[y0].any() and mask[y1 - 1].any()
      assert mask[:, x0].any() and mask[:, x1 - 1].any()
      lo, hi = digit_scenes.DIGIT_HEIGHT
      assert lo - 1 <= y1 - y0 <= hi
    # The drawn ink is visible: the image is brighter there than elsewhere.
    ink = scene.masks.any(axis=0)
    grey = scene.image[..., 0].astype(float)
    assert grey[ink].mean() > grey[~ink].mean() + 30
    # Limited overlap between any two boxes.
    pixels = np.rint(scene.boxes * size).astype(int)
    for i in range(len(pixels)):
      for j in range(i):
        a, b = pixels[i], pixels[j]
        inter = (max(0, min(a[2], b[2]) - max(a[0], b[0]))
                 * max(0, min(a[3], b[3]) - max(a[1], b[1])))
        smaller = min(np.prod(a[2:] - a[:2]), np.prod(b[2:] - b[:2]))
        assert inter <= digit_scenes.MAX_OVERLAP * smaller + 1e-9


def test_generation_is_deterministic():
  a = list(digit_scenes.generate(5, seed=3, split="test"))
  b = list(digit_scenes.generate(5, seed=3, split="test"))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    for key in ("bbox", "label", "source"):
      np.testing.assert_array_equal(x["objects"][key], y["objects"][key])


@pytest.mark.parametrize("flip", [False, True])
def test_augmentation_flips_only_when_allowed(flip):
  # One box at the left edge: translation moves it by at most 1/8 of the
  # image, a mirror image puts it at the right edge.
  size = 64
  image = tf.zeros((size, size, 3))
  boxes = tf.constant([[2.0, 20.0, 14.0, 40.0]])
  classes = tf.constant([3.0])
  moved = []
  for i in range(16):
    _, out, _ = detection_data._augment(  # pylint: disable=protected-access
        tf.constant([i, 7]), image, boxes, classes, size=size, flip=flip)
    moved.append(float(out[0, 0]))
  mirrored = [x > size / 2 for x in moved]
  assert any(mirrored) == flip


def test_flagfile_runs_shrunk_and_reports_ap_per_digit(prepared, data_dir,
                                                       tmp_path):
  # configs/digit_scenes_yolov8.cfg, 1 epoch on 8 scenes at 32 px.
  del prepared  # the dataset is prepared in `data_dir`
  model_dir = tmp_path / "run"
  proc = trainer_process.run(
      "trainers.detect",
      f"--flagfile={os.path.join(REPO, 'configs', 'digit_scenes_yolov8.cfg')}",
      "--epochs=1", "--train_examples=8", "--val_examples=8",
      "--map_examples=4", "--image_size=32", "--batch_size=4",
      "--noise_analysis=false", "--verbose=0", f"--data_dir={data_dir}",
      f"--model_dir={model_dir}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((model_dir / "result.json").read_text())
  assert result["dataset"] == "kqreg_digit_scenes"
  assert set(result["val_ap50_per_class"]) == set(digit_scenes.CLASS_NAMES)
