"""Runs the configs of a sweep, several at once in worker processes.

Most of a small run's time is per-epoch overhead, tracing and evaluation on
one core, not arithmetic: independent seeds trained side by side in
processes of their own, each with its share of the cores, finish more runs
per minute than one process with every core. Each worker traces its model
once and keeps TensorFlow's thread pools at its share.

A worker process imports nothing of the caller: it rebuilds each config from
its fields and calls `kqreg.runs.run`, which resumes or skips a run exactly
as in one process. Worker processes print nothing of TensorFlow's C++
start-up (`QUIET_WORKER_SOURCE`) unless asked to.

One writer per run: a run whose folder another live process holds
(`kqreg.runs.lock`, e.g. a second sweep into the same folder) is put off
while others run, and taken up again once its lock is gone.

With `ray=RayOptions(...)` each run is a Ray Core task on a cluster instead
(`num_cpus`/`num_gpus` per run; a run whose worker or node died is retried
and resumes from its backup, one failing for its own reason is not).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import socket
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["QUIET_WORKER_SOURCE", "RayOptions", "check_ray_address",
           "connect_ray", "default_workers", "exclusive", "run_configs"]


def default_workers(cores: Optional[int] = None) -> int:
  """One worker per core, at most 8: each holds a TensorFlow runtime
  (about 1 GB), and a small run keeps one core busy."""
  cores = cores or os.cpu_count() or 1
  return max(1, min(cores, 8))


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
  """What a pool worker runs first: quiet stderr, then `_init_worker`."""
  return ((QUIET_WORKER_SOURCE if quiet else "") +
          "from kqreg.study.sweep.runner import _init_worker\n"
          f"_init_worker({int(threads)}, {bool(quiet)})\n")


def _init_worker(threads: int, quiet: bool = True) -> None:
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


def _run_in_worker(task: str, fields: Dict[str, Any]) -> Dict[str, Any]:
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


def _run_here(config) -> Dict[str, Any]:
  import tf_keras  # pylint: disable=g-import-not-at-top
  from kqreg.runs import train as train_lib
  try:
    return train_lib.run(config)
  finally:
    tf_keras.backend.clear_session()


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


def _run_in_pool(task: str, fields: Dict[str, Any]) -> Tuple[Dict[str, Any], str]:
  return _run_in_worker(task, fields), socket.gethostname()


class _Inline:
  """Runs each config in this process, one at a time."""

  capacity = 1

  def submit(self, config) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
      future.set_result((_run_here(config), socket.gethostname()))
    except Exception as e:  # pylint: disable=broad-except
      future.set_exception(e)
    return future

  def close(self, failed: bool) -> None:
    del failed


class _Pool:
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
      finished = model_dir_lib.finished_result(configs[i].model_dir,
                                               configs[i].identity())
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
                = None, *, ray: Optional["RayOptions"] = None,
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
    executor = _Ray(ray, quiet)
  elif workers <= 1 or len(configs) <= 1:
    executor = _Inline()
  else:
    _prepare_data(configs)
    executor = _Pool(min(workers, len(configs)), quiet)
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


# --- Ray --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RayOptions:
  """Where and how a sweep's runs become Ray tasks (`run_configs(ray=...)`).

  address: auto (the cluster started on this machine), <host:port> (the
    head's GCS port) or ray://<host:port> (Ray Client).
  cpus_per_run, gpus_per_run: what Ray reserves for each run; TensorFlow
    uses `cpus_per_run` threads.
  max_retries: times a run is started again after its worker or node died
    (it resumes from its backup); a run's own error is never retried.

  Example:
  >>> RayOptions("127.0.0.1:6379").cpus_per_run
  1
  """
  address: str
  cpus_per_run: int = 1
  gpus_per_run: float = 0.0
  max_retries: int = 3


def _local_cluster_address() -> Optional[str]:
  """The address `ray start --head` left for `auto` on this machine."""
  try:
    from ray._private import utils as ray_utils  # pylint: disable=g-import-not-at-top
    return ray_utils.read_ray_address()
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    with open(os.path.join(tempfile.gettempdir(), "ray",
                           "ray_current_cluster")) as f:
      return f.read().strip() or None
  except OSError:
    return None


def check_ray_address(address: str, timeout_s: float = 5.0) -> str:
  """Refuses, in one line, an address where no cluster answers.

  Opens a TCP connection to it (at most `timeout_s`), before `ray.init`,
  which would retry for a minute and print as it goes. Returns the
  host:port it reached.

  Raises:
    ConfigError: malformed, nothing listening, or `auto` with no cluster.

  Example:
  >>> from kqreg.runs import ConfigError
  >>> try:
  ...   check_ray_address("nohost")
  ... except ConfigError as e:
  ...   print(str(e).split(":")[0])
  --ray_address=nohost
  """
  from kqreg.runs.config import ConfigError  # pylint: disable=g-import-not-at-top
  flag = f"--ray_address={address}"
  target = address.strip()
  if target == "auto":
    target = os.environ.get("RAY_ADDRESS") or _local_cluster_address() or ""
    if not target or target == "auto":
      raise ConfigError(
          f"{flag}: no Ray cluster was started on this machine; start one "
          "(ray start --head) or pass --ray_address=<host:port>.")
  hostport = target[len("ray://"):] if target.startswith("ray://") else target
  host, _, port = hostport.rpartition(":")
  host = host.strip("[]")
  if not host or not port.isdigit():
    raise ConfigError(f"{flag}: expected auto, <host:port> or "
                      "ray://<host:port>.")
  try:
    socket.create_connection((host, int(port)), timeout=timeout_s).close()
  except OSError as e:
    raise ConfigError(
        f"{flag}: no Ray cluster answers at {host}:{port} "
        f"({e.strerror or type(e).__name__}); start it (ray start --head "
        f"--port={port}) or fix the address.") from None
  return f"{host}:{port}"


def connect_ray(options: RayOptions) -> None:
  """Joins the cluster of `options` (once per process), or ConfigError.

  Example:
  >>> from kqreg.runs import ConfigError
  >>> try:
  ...   connect_ray(RayOptions("ray://nohost"))
  ... except ConfigError as e:
  ...   print("expected auto" in str(e))
  True
  """
  from kqreg.runs.config import ConfigError  # pylint: disable=g-import-not-at-top
  check_ray_address(options.address)
  flag = f"--ray_address={options.address}"
  try:
    import ray  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError(f"{flag} needs Ray: pip install 'kqreg[cluster]'.") from None
  if not ray.is_initialized():
    try:
      ray.init(address=options.address, namespace="kqreg",
               logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
      detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise ConfigError(f"{flag}: cannot join the cluster ({detail}).") from None
  nodes = [n for n in ray.nodes() if n.get("Alive")]
  largest = max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)
  gpus = max((n.get("Resources", {}).get("GPU", 0) for n in nodes), default=0)
  if options.cpus_per_run > largest or options.gpus_per_run > gpus:
    ray.shutdown()
    raise ConfigError(
        f"--ray_cpus_per_run={options.cpus_per_run} "
        f"--ray_gpus_per_run={options.gpus_per_run:g}: no node of "
        f"{options.address} has that much (largest: {largest:g} CPUs, "
        f"{gpus:g} GPUs); a run would wait forever.")


def _ray_task(task: str, fields: Dict[str, Any], threads: int, quiet: bool):
  """One run on a Ray worker; shipped by value (see below)."""
  if quiet:
    exec(QUIET_WORKER_SOURCE, {})  # pylint: disable=exec-used
  from kqreg.study.sweep import runner  # pylint: disable=g-import-not-at-top
  return runner._run_on_ray_node(task, fields, threads, quiet)  # pylint: disable=protected-access


# cloudpickle ships a function of a module the worker has not imported by
# value: the worker then runs QUIET_WORKER_SOURCE before kqreg (and with it
# TensorFlow) is first imported there.
_ray_task.__module__ = "kqreg_sweep_ray_task"

_RAY_WORKER_READY = False


def _run_on_ray_node(task: str, fields: Dict[str, Any], threads: int,
                     quiet: bool) -> Tuple[Dict[str, Any], str]:
  global _RAY_WORKER_READY
  import ray  # pylint: disable=g-import-not-at-top
  if not _RAY_WORKER_READY:  # a Ray worker runs task after task
    _init_worker(threads, quiet)
    _RAY_WORKER_READY = True
  import tf_keras  # pylint: disable=g-import-not-at-top
  try:
    result = _run_in_worker(task, fields)
  finally:
    tf_keras.backend.clear_session()
  node = ray.get_runtime_context().get_node_id()[:8]
  return result, f"{socket.gethostname()}/{node}"


class _Ray:
  """Each run a Ray Core task: Ray queues them by the CPUs they ask for."""

  def __init__(self, options: RayOptions, quiet: bool):
    import ray  # pylint: disable=g-import-not-at-top
    connect_ray(options)
    self._ray = ray
    self._threads = max(1, int(options.cpus_per_run))
    self._quiet = quiet
    # System failures (worker or node died) are retried, and the run
    # resumes from its backup; a run's own error (bad flags, divergence) is
    # not: it would fail again.
    self._remote = ray.remote(_ray_task)
    self._options = dict(
        num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
        max_retries=options.max_retries, retry_exceptions=False)
    self._refs: List[Any] = []
    self.capacity = 1 << 30  # Ray does the queueing

  def submit(self, config) -> concurrent.futures.Future:
    ref = self._remote.options(
        name=f"kqreg:{os.path.basename(config.model_dir.rstrip('/'))}",
        **self._options).remote(config.TASK, config.to_json(), self._threads, self._quiet)
    self._refs.append(ref)
    mine: concurrent.futures.Future = concurrent.futures.Future()
    ray = self._ray

    def _settle(theirs):
      try:
        mine.set_result(theirs.result())
      except BaseException as e:  # pylint: disable=broad-except
        cause = getattr(e, "cause", None)
        if isinstance(e, ray.exceptions.RayTaskError) and isinstance(
            cause, Exception):
          e = cause  # the run's own error, as in a local sweep
        mine.set_exception(e)

    ref.future().add_done_callback(_settle)
    return mine

  def close(self, failed: bool) -> None:
    try:
      if failed:
        for ref in self._refs:
          try:
            self._ray.cancel(ref)  # queued: dropped; running: interrupted
          except Exception:  # pylint: disable=broad-except
            pass
        self._ray.wait(self._refs, num_returns=len(self._refs), timeout=120)
    finally:
      self._ray.shutdown()


def grid(policies: Sequence[str], seeds: Sequence[int]
         ) -> Iterator[Tuple[str, int]]:
  """(policy, seed) pairs, policy-major: the order of the report's rows."""
  for policy in policies:
    for seed in seeds:
      yield policy, seed
