"""Runs the configs of a sweep, several at once in worker processes.

Most of a small run's time is per-epoch overhead, tracing and evaluation on
one core, not arithmetic: independent seeds trained side by side in
processes of their own, each with its share of the cores, finish more runs
per minute than one process with every core. Each worker traces its model
once and keeps TensorFlow's thread pools at its share.

Where the runs train is an executor's business: this process or a pool of
worker processes (`workers`), or a Ray cluster (`ray_cluster`); this module
schedules them and holds the sweep's order.

One writer per run: a run whose folder another live process holds
(`kqreg.runs.lock`, e.g. a second sweep into the same folder) is put off
while others run, and taken up again once its lock is gone.

With `ray=RayOptions(...)` each run is a Ray Core task on a cluster instead.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from kqreg.study.sweep.ray_cluster import RayExecutor, RayOptions
from kqreg.study.sweep.workers import InlineExecutor, PoolExecutor

__all__ = ["exclusive", "grid", "run_configs"]


def _prepare_data(configs: Sequence[Any]) -> None:
  """Prepares each dataset once, here, before workers open it.

  Two workers preparing an offline set (kqreg_mnist, ...) into one TFDS
  folder at the same time would race.
  """
  from kqreg.runs import task as task_lib
  from kqreg.runs import train as train_lib
  seen = set()
  for config in configs:
    key = (config.TASK, config.dataset, config.data_dir)
    if key not in seen:
      seen.add(key)
      with train_lib.data_errors(config):
        task_lib.task_named(config.TASK).load(config)


def _schedule(configs: Sequence[Any], executor, on_done: Callable,
              on_wait: Optional[Callable[[List[int]], None]],
              poll_s: float) -> None:
  """Runs every config on `executor`, deferring runs other processes write.

  A run whose folder holds a live lock (`kqreg.runs.lock`) is not started;
  the others go first, and the locked one is tried again once its lock is
  gone (then it is usually finished and returns at once). A run refused
  with `RunLocked` (locked between the look and its start) goes back in
  the queue the same way. A finished run is read here, not sent to a
  worker (which would import TensorFlow only to find it done).
  """
  from kqreg.runs import lock as lock_lib  # pylint: disable=g-import-not-at-top
  from kqreg.runs import model_dir as model_dir_lib  # pylint: disable=g-import-not-at-top
  here = socket.gethostname()
  pending = list(range(len(configs)))
  running: Dict[concurrent.futures.Future, int] = {}
  told: List[int] = []
  while pending or running:
    locked = []
    for i in list(pending):
      if lock_lib.is_locked_by_live_owner(configs[i].model_dir):
        locked.append(i)
        continue
      finished = model_dir_lib.finished_result(configs[i])
      if finished is not None:
        pending.remove(i)
        on_done(i, finished, here)
        continue
      if len(running) >= executor.capacity:
        break
      pending.remove(i)
      running[executor.submit(configs[i])] = i
    if locked and not running and locked != told and on_wait:
      on_wait(locked)
      told = locked
    if not running:
      time.sleep(poll_s)
      continue
    done, _ = concurrent.futures.wait(
        running, timeout=poll_s if pending else None,
        return_when=concurrent.futures.FIRST_COMPLETED)
    for future in done:
      i = running.pop(future)
      error = future.exception()
      if isinstance(error, lock_lib.RunLocked):
        pending.append(i)
        pending.sort()
        continue
      if error is not None:
        raise error
      on_done(i, *future.result())


def run_configs(configs: Sequence[Any], workers: int = 1,
                on_result: Optional[Callable[[int, Dict[str, Any], str], None]]
                = None, *, ray: Optional[RayOptions] = None,
                quiet: bool = True,
                on_wait: Optional[Callable[[List[int]], None]] = None,
                poll_s: float = 2.0) -> List[Dict[str, Any]]:
  """Runs every config of `configs`; returns their results in that order.

  Args:
    configs: `kqreg.runs.RunConfig`s (of one task or several).
    workers: processes training at once; 1 trains in this process.
    on_result: called as `on_result(index, result, node)` as each run
      finishes (in finishing order), e.g. to print a line per run; `node`
      names the machine (and, on Ray, the node id) that ran it.
    ray: run each config as a task on this Ray cluster instead (`workers`
      is then unused).
    quiet: worker processes print nothing of TensorFlow's C++ start-up.
    on_wait: called with the indices of the runs that wait for another
      process's lock, when nothing else is left to start.
    poll_s: seconds between looks at locked runs.

  Raises:
    The first error a run raises (`ConfigError`, `TrainingDiverged`, ...);
    runs already started finish first, and rerunning resumes the rest.

  Example:
  >>> run_configs([])
  []
  """
  for config in configs:
    config.validate()  # refuse bad settings before any run starts
  results: List[Optional[Dict[str, Any]]] = [None] * len(configs)
  if not configs:
    return []

  def _done(i: int, result: Dict[str, Any], node: str) -> None:
    results[i] = result
    if on_result:
      on_result(i, result, node)

  if ray is not None:
    _prepare_data(configs)
    executor = RayExecutor(ray, quiet)
  elif workers <= 1 or len(configs) <= 1:
    executor = InlineExecutor()
  else:
    _prepare_data(configs)
    executor = PoolExecutor(min(workers, len(configs)), quiet)
  failed = True
  try:
    _schedule(configs, executor, _done, on_wait, poll_s)
    failed = False
  finally:
    executor.close(failed)
  return results  # type: ignore[return-value]


@contextlib.contextmanager
def exclusive(folder: str, timeout_s: float = 600.0) -> Iterator[None]:
  """Holds `folder`'s run lock, waiting while another process holds it.

  For a sweep's report: two sweeps into one folder write it in turn.

  Example:
  >>> import tempfile
  >>> with exclusive(tempfile.mkdtemp()):
  ...   pass
  """
  from kqreg.runs import lock as lock_lib  # pylint: disable=g-import-not-at-top
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      held = lock_lib.RunLock(folder).acquire()
      break
    except lock_lib.RunLocked:
      if time.monotonic() > deadline:
        raise
      time.sleep(0.5)
  try:
    yield
  finally:
    held.release()


def grid(policies: Sequence[str], seeds: Sequence[int]
         ) -> Iterator[Tuple[str, int]]:
  """(policy, seed) pairs, policy-major: the order of the report's rows."""
  for policy in policies:
    for seed in seeds:
      yield policy, seed
