"""Where a run trains: `tf.distribute` strategies, the chief, sharding, signals."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Tuple

from kqreg import _keras2  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras

from kqreg.runs.config import STRATEGIES, ConfigError

__all__ = ["set_up_process", "make_strategy", "is_chief", "shard_by_example",
           "split_cpu", "interrupt_on_sigterm"]


@contextlib.contextmanager
def interrupt_on_sigterm():
  """Turns SIGTERM into KeyboardInterrupt (as SIGINT) within the block."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def _raise(signum, frame):
    del frame
    raise KeyboardInterrupt(signal.Signals(signum).name)

  previous = signal.signal(signal.SIGTERM, _raise)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The `tf.distribute` strategy called `name` (see `STRATEGIES`)."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise ConfigError("--strategy=multi_worker reads the cluster from the "
                        "TF_CONFIG environment variable, which is not set.")
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
      raise ConfigError(f"--strategy=tpu: no TPU found ({e}).") from e
    return tf.distribute.TPUStrategy(resolver)
  raise ConfigError(f"--strategy: unknown strategy {name!r}; use one of "
                    f"{', '.join(STRATEGIES)}")


def shard_by_example(ds: tf.data.Dataset,
                      strategy: tf.distribute.Strategy) -> tf.data.Dataset:
  """Multi-worker: shard by example (offline TFDS sets are a single file)."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return ds
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return ds.with_options(options)


def split_cpu(n: int) -> None:
  """Splits the CPU into `n` logical devices (for `mirrored` on one host)."""
  cpus = tf.config.list_physical_devices("CPU")
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
  except RuntimeError as e:
    current = len(tf.config.list_logical_devices("CPU"))
    if current == n:
      return
    raise ConfigError(
        f"--virtual_cpus={n}: TensorFlow already set up {current} CPU "
        "device(s) in this process; pass it on the command line of a fresh "
        "process.") from e


def set_up_process(*, virtual_cpus: int, seed: int, deterministic: bool,
                   strategy: str) -> Tuple[tf.distribute.Strategy, bool]:
  """Devices, seed, determinism and strategy of a run: (strategy, chief).

  In this order: virtual CPUs must exist before TensorFlow's runtime starts,
  and the seed is set before any weight or shuffle is drawn.
  """
  if virtual_cpus:
    split_cpu(virtual_cpus)
  tf_keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()
  made = make_strategy(strategy)
  return made, is_chief(made)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True unless this process is a non-chief worker of a cluster."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  resolver = strategy.cluster_resolver
  task_type, task_id = resolver.task_type, resolver.task_id
  if task_type in (None, "chief"):
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return task_type == "worker" and task_id == 0 and not has_chief
