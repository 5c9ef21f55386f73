"""Where a sweep's runs train on this machine: in this process or in a pool
of worker processes, each with its share of the cores.

A worker process imports nothing of the caller: it rebuilds each config from
its fields and calls `kqreg.runs.run`, which resumes or skips a run exactly
as in one process. Worker processes print nothing of TensorFlow's C++
start-up (`QUIET_WORKER_SOURCE`) unless asked to. The Ray executor
(`ray_cluster`) starts its workers the same way.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import socket
from typing import Any, Dict, Optional, Tuple

__all__ = ["QUIET_WORKER_SOURCE", "InlineExecutor", "PoolExecutor",
           "default_workers", "init_worker", "run_in_worker"]


def default_workers(cores: Optional[int] = None) -> int:
  """One worker per core and one more, at most 8 (one core: one worker).

  A one-thread run keeps its core only ~89% busy (it waits on its own
  hand-offs), so one extra process fills the gaps: on 2 AMD EPYC cores, six
  main-job runs took 142-145 s with 3 workers against 165-170 s with 2,
  the same CPU seconds. Each worker holds a TensorFlow runtime (about
  0.9 GB), which caps the count.
  """
  cores = cores or os.cpu_count() or 1
  return 1 if cores == 1 else min(cores + 1, 8)


# Run first in a fresh worker process (pool or Ray), before anything imports
# TensorFlow: the C++ start-up lines (absl, CUDA probing, CPU features) go to
# fd 2, which now points to /dev/null, while Python's `sys.stderr` keeps the
# real stream, so warnings and kqreg's own lines still show. Once per
# process. Plain source, run with `exec`: a function of this module could not
# be unpickled in the worker without importing kqreg, and so TensorFlow, first.
QUIET_WORKER_SOURCE = """\
import os, sys
if os.environ.get("KQREG_QUIET_WORKER") != str(os.getpid()):
  os.environ["KQREG_QUIET_WORKER"] = str(os.getpid())
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.stderr.flush()
  sys.stderr = os.fdopen(os.dup(2), "w", buffering=1, errors="backslashreplace")
  _null = os.open(os.devnull, os.O_WRONLY)
  os.dup2(_null, 2)
  os.close(_null)
"""


def _worker_source(threads: int, quiet: bool) -> str:
  """What a pool worker runs first: quiet stderr, then `init_worker`."""
  return ((QUIET_WORKER_SOURCE if quiet else "") +
          "from kqreg.study.sweep.workers import init_worker\n"
          f"init_worker({int(threads)}, {bool(quiet)})\n")


def init_worker(threads: int, quiet: bool = True) -> None:
  # TensorFlow's thread pools are fixed before its runtime starts.
  os.environ["OMP_NUM_THREADS"] = str(threads)
  import kqreg  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
  except RuntimeError:
    pass  # a reused worker (Ray) whose runtime already started
  if quiet:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.ERROR)  # as the trainers' own process
  tf.config.list_physical_devices()


def run_in_worker(task: str, fields: Dict[str, Any]) -> Dict[str, Any]:
  from kqreg.runs import task as task_lib
  from kqreg.runs import train as train_lib
  if task == "detect":
    import contextlib  # pylint: disable=g-import-not-at-top
    import io  # pylint: disable=g-import-not-at-top
    with contextlib.redirect_stdout(io.StringIO()):  # keras-cv's banner
      import kqreg.detection  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  config = task_lib.task_named(task).config_class(**fields)
  _picklable_errors()
  return train_lib.run(config)


def _picklable_errors() -> None:
  """Lets `TrainingDiverged` cross back to the sweep's process.

  Its (epoch, step, message) constructor defeats the default pickling of
  exceptions (by message alone); copyreg covers pickle and cloudpickle.
  """
  import copyreg  # pylint: disable=g-import-not-at-top
  from kqreg.runs.callbacks import TrainingDiverged  # pylint: disable=g-import-not-at-top
  copyreg.pickle(TrainingDiverged,
                 lambda e: (TrainingDiverged, (e.epoch, e.step, str(e))))


def run_here(config) -> Dict[str, Any]:
  import tf_keras  # pylint: disable=g-import-not-at-top
  from kqreg.runs import train as train_lib
  try:
    return train_lib.run(config)
  finally:
    tf_keras.backend.clear_session()


def _run_in_pool(task: str, fields: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
  return run_in_worker(task, fields), socket.gethostname()


class InlineExecutor:
  """Runs each config in this process, one at a time."""

  capacity = 1

  def submit(self, config) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
      future.set_result((run_here(config), socket.gethostname()))
    except Exception as e:  # pylint: disable=broad-except
      future.set_exception(e)
    return future

  def close(self, failed: bool) -> None:
    del failed


class PoolExecutor:
  """Worker processes of this machine, each with its share of the cores."""

  def __init__(self, workers: int, quiet: bool):
    self.capacity = workers
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: a fork of a process that already runs TensorFlow deadlocks.
    self._pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=exec, initargs=(_worker_source(threads, quiet), {}))

  def submit(self, config) -> concurrent.futures.Future:
    return self._pool.submit(_run_in_pool, config.TASK, config.to_json())

  def close(self, failed: bool) -> None:
    # Runs already started finish (and release their locks) first.
    self._pool.shutdown(wait=True, cancel_futures=failed)
