"""Runs the configs of a sweep, several at once in worker processes.

Most of a small run's time is per-epoch overhead, tracing and evaluation on
one core, not arithmetic: independent seeds trained side by side in
processes of their own, each with its share of the cores, finish more runs
per minute than one process with every core. Each worker traces its model
once and keeps TensorFlow's thread pools at its share.

A worker process imports nothing of the caller: it rebuilds each config from
its fields and calls `kqreg.runs.run`, which resumes or skips a run exactly
as in one process.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["default_workers", "run_configs"]


def default_workers(cores: Optional[int] = None) -> int:
  """One worker per core, at most 8: each holds a TensorFlow runtime
  (about 1 GB), and a small run keeps one core busy."""
  cores = cores or os.cpu_count() or 1
  return max(1, min(cores, 8))


def _init_worker(threads: int) -> None:
  # TensorFlow is already imported here (unpickling this function imports
  # kqreg), so its import lines reach stderr; its devices are not set up
  # yet: the thread pools are fixed now, and the device-setup lines muted.
  os.environ["OMP_NUM_THREADS"] = str(threads)
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import kqreg  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.list_physical_devices()
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _run_in_worker(task: str, fields: Dict[str, Any]) -> Dict[str, Any]:
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  if task == "detect":
    import contextlib  # pylint: disable=g-import-not-at-top
    import io  # pylint: disable=g-import-not-at-top
    with contextlib.redirect_stdout(io.StringIO()):  # keras-cv's banner
      import kqreg.detection  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  config = runs.task_named(task).config_class(**fields)
  return runs.run(config)


def _run_here(config) -> Dict[str, Any]:
  import tf_keras  # pylint: disable=g-import-not-at-top
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  try:
    return runs.run(config)
  finally:
    tf_keras.backend.clear_session()


def _prepare_data(configs: Sequence[Any]) -> None:
  """Prepares each dataset once, here, before workers open it.

  Two workers preparing an offline set (kqreg_mnist, ...) into one TFDS
  folder at the same time would race.
  """
  from kqreg import runs  # pylint: disable=g-import-not-at-top
  seen = set()
  for config in configs:
    key = (config.TASK, config.dataset, config.data_dir)
    if key not in seen:
      seen.add(key)
      with runs.data_errors(config):
        runs.task_named(config.TASK).load(config)


def run_configs(configs: Sequence[Any], workers: int = 1,
                on_result: Optional[Callable[[int, Dict[str, Any]], None]]
                = None) -> List[Dict[str, Any]]:
  """Runs every config of `configs`; returns their results in that order.

  Args:
    configs: `kqreg.runs.RunConfig`s (of one task or several).
    workers: processes training at once; 1 trains in this process.
    on_result: called as `on_result(index, result)` as each run finishes
      (in finishing order), e.g. to print a line per run.

  Raises:
    The first error a run raises (`ConfigError`, `TrainingDiverged`, ...);
    runs already started finish first, and rerunning resumes the rest.
  """
  for config in configs:
    config.validate()  # refuse bad settings before any run starts
  results: List[Optional[Dict[str, Any]]] = [None] * len(configs)
  if workers <= 1 or len(configs) <= 1:
    for i, config in enumerate(configs):
      results[i] = _run_here(config)
      if on_result:
        on_result(i, results[i])
    return results  # type: ignore[return-value]
  workers = min(workers, len(configs))
  _prepare_data(configs)
  threads = max(1, (os.cpu_count() or 1) // workers)
  # spawn: a fork of a process that already runs TensorFlow deadlocks.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=context, initializer=_init_worker,
      initargs=(threads,)) as pool:
    futures = {pool.submit(_run_in_worker, c.TASK, c.to_json()): i
               for i, c in enumerate(configs)}
    try:
      for future in concurrent.futures.as_completed(futures):
        i = futures[future]
        results[i] = future.result()
        if on_result:
          on_result(i, results[i])
    except BaseException:
      for future in futures:
        future.cancel()
      raise
  return results  # type: ignore[return-value]


def grid(policies: Sequence[str], seeds: Sequence[int]
         ) -> Iterator[Tuple[str, int]]:
  """(policy, seed) pairs, policy-major: the order of the report's rows."""
  for policy in policies:
    for seed in seeds:
      yield policy, seed
