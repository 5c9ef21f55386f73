"""A sweep's runs as Ray Core tasks on a cluster (`run_configs(ray=...)`).

Each run asks Ray for `cpus_per_run`/`gpus_per_run`, and Ray queues the runs
by them. A run whose worker or node died is retried and resumes from its
backup; one failing for its own reason is not. Ray is imported only here,
and only when a cluster is asked for (`pip install 'kqreg[cluster]'`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import socket
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from kqreg.study.sweep.workers import (QUIET_WORKER_SOURCE, init_worker,
                                       run_in_worker)

__all__ = ["RayExecutor", "RayOptions", "check_ray_address", "connect_ray"]


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
  from kqreg.study.sweep import ray_cluster  # pylint: disable=g-import-not-at-top
  return ray_cluster._run_on_ray_node(task, fields, threads, quiet)  # pylint: disable=protected-access


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
    init_worker(threads, quiet)
    _RAY_WORKER_READY = True
  import tf_keras  # pylint: disable=g-import-not-at-top
  try:
    result = run_in_worker(task, fields)
  finally:
    tf_keras.backend.clear_session()
  node = ray.get_runtime_context().get_node_id()[:8]
  return result, f"{socket.gethostname()}/{node}"


class RayExecutor:
  """Each run a Ray Core task: Ray queues them by the CPUs they ask for.

  An executor of `runner.run_configs`: `submit(config)` returns a future of
  (result, node); `close(failed)` cancels what is left after a failure.
  """

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
