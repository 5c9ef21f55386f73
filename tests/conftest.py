"""Shared fixtures. kqreg is imported first so Keras 2 is selected."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Each pytest-xdist worker prepares the offline datasets in its own TFDS data
# dir (inherited by the trainers the tests start): two processes preparing
# one dataset in one folder would race. Set before TFDS is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ.setdefault("TFDS_DATA_DIR", os.path.join(
      tempfile.gettempdir(), f"kqreg-tests-tfds-{os.getuid()}-"
      f"{os.environ['PYTEST_XDIST_WORKER']}"))

import kqreg  # noqa: E402,F401  (before TensorFlow)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tf_keras  # noqa: E402


# The suite runs on two workers (setup.cfg: `--dist loadgroup` in collection
# order). The tests of a file whose module fixtures train or export models
# share one worker, so each fixture is built once; every other test goes to
# whichever worker is free. Files are handed out longest first: a long test
# handed out last would leave one worker idle while the other runs it.
_LONGEST_FIRST = ("test_detection.py", "test_benchmark.py",
                  "test_zoo_learns.py", "test_detection_runs.py",
                  "test_trainers.py", "test_export.py",
                  "test_sweep_cluster.py", "test_configs_flagfiles.py",
                  "test_digit_scenes.py", "test_docs.py")


def _uses_module_fixture(item) -> bool:
  definitions = item._fixtureinfo.name2fixturedefs.values()  # pylint: disable=protected-access
  return any(d.scope == "module" for defs in definitions for d in defs)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
  for item in items:
    if _uses_module_fixture(item):
      item.add_marker(pytest.mark.xdist_group(item.path.name))
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def small_cnn(input_shape=(8, 8, 1), classes=10, name="small_cnn"):
  """Conv-BN-ReLU, pooling, a residual Add and a Dense head."""
  inputs = tf_keras.Input(input_shape)
  x = tf_keras.layers.Conv2D(8, 3, padding="same", use_bias=False,
                             name="conv_a")(inputs)
  x = tf_keras.layers.BatchNormalization(name="bn_a")(x)
  x = tf_keras.layers.ReLU(name="relu_a")(x)
  y = tf_keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(x)
  x = tf_keras.layers.Add(name="add")([x, y])
  x = tf_keras.layers.MaxPooling2D(name="pool")(x)
  x = tf_keras.layers.Flatten(name="flatten")(x)
  outputs = tf_keras.layers.Dense(classes, name="head")(x)
  return tf_keras.Model(inputs, outputs, name=name)


@pytest.fixture
def cnn():
  tf_keras.utils.set_random_seed(0)
  return small_cnn()


@pytest.fixture
def train_step_traces(monkeypatch):
  """Names of the models whose `train_step` is traced (called), in order."""
  traces = []
  train_step = tf_keras.Model.train_step

  def counted(model, data):
    traces.append(model.name)
    return train_step(model, data)

  monkeypatch.setattr(tf_keras.Model, "train_step", counted)
  return traces


@pytest.fixture
def zip_member_seeks(monkeypatch):
  """Names of the zip members seeked in, in order (every `.keras` read)."""
  import zipfile  # pylint: disable=g-import-not-at-top
  seeks = []
  seek = zipfile.ZipExtFile.seek

  def counted(self, *args, **kwargs):
    seeks.append(self.name)
    return seek(self, *args, **kwargs)

  monkeypatch.setattr(zipfile.ZipExtFile, "seek", counted)
  return seeks


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  x = rng.random((32, 8, 8, 1), dtype=np.float32)
  y = rng.integers(0, 10, 32)
  return x, y


@pytest.fixture(scope="session", autouse=True)
def offline_datasets_prepared():
  """Prepares the offline classification sets once per test process.

  Trainer tests run subprocesses and count their stderr lines; a dataset
  prepared inside one of them would add TFDS's progress bars.
  """
  import kqreg.data  # pylint: disable=g-import-not-at-top
  for name in ("kqreg_digits", "kqreg_mnist", "kqreg_textures"):
    kqreg.data.load(name, "train")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  """kqreg_shapes prepared in a fresh TFDS folder (the detection tests)."""
  from kqreg import detection  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  detection.load_detection("kqreg_shapes", "train", data_dir)
  return data_dir
