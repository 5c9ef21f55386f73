"""Trainer processes for the tests, forked from a server that imported kqreg.

`run("trainers.classify", *args)` does what `python -m trainers.classify
*args` does, in a process of its own, with its own exit status, stdout,
stderr, environment and working directory, but without paying the imports:
TensorFlow, kqreg and keras-cv take 5-10 s per process, about a third of the
suite's time when every trainer test paid them. multiprocessing's fork server
imports them once per test worker, before any TensorFlow runtime exists
(forking a process that runs TensorFlow deadlocks; importing it starts no
runtime), and forks each trainer from there.

What only a fresh interpreter shows (Keras 2 chosen before TensorFlow, no
side effects at import, the console scripts) is tested with real
interpreters in test_packaging.py and test_quantize.py.
"""

from __future__ import annotations

import csv
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import shutil
import sys
import tempfile
import threading
from typing import Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a trainer imports before it parses a flag; kqreg.detection also
# brings keras-cv.
PRELOAD = ["kqreg", "kqreg.runs.train", "kqreg.classification.task", "kqreg.detection",
           "kqreg.study.sweep.runner", "tensorflow_datasets"]

_lock = threading.Lock()
_context = None


def _fork_server():
  """The fork-server context, its server started with stdio on /dev/null
  (keras-cv prints a banner at import; the test worker's stdio is pytest's)."""
  global _context
  with _lock:
    if _context is None:
      context = multiprocessing.get_context("forkserver")
      context.set_forkserver_preload(PRELOAD)
      # The server preloads the checkout's kqreg, never an installed copy.
      saved_env = os.environ.get("PYTHONPATH")
      os.environ["PYTHONPATH"] = os.pathsep.join(
          [ROOT] + ([saved_env] if saved_env else []))
      saved = [os.dup(1), os.dup(2)]
      devnull = os.open(os.devnull, os.O_WRONLY)
      try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        multiprocessing.forkserver.ensure_running()
      finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
          os.close(fd)
        if saved_env is None:
          del os.environ["PYTHONPATH"]
        else:
          os.environ["PYTHONPATH"] = saved_env
      _context = context
    return _context


def _main(module: str, args, env: Dict[str, str], cwd: str, stdout: str,
          stderr: str) -> None:
  """The forked child: becomes `python -m module *args`."""
  sys.stdout.flush()
  sys.stderr.flush()
  for fd, path in ((1, stdout), (2, stderr)):
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(target, fd)
    os.close(target)
  os.chdir(cwd)
  os.environ.clear()
  os.environ.update(env)
  sys.path.insert(0, ROOT)  # as PYTHONPATH=ROOT would
  sys.argv = [module, *args]
  runpy.run_module(module, run_name="__main__", alter_sys=True)


class TrainerProcess:
  """A started trainer: `pid`, `poll()`, `send_signal()`, `wait()`; after
  `wait`, `returncode`, `stdout` and `stderr` (text), as subprocess gives."""

  def __init__(self, module: str, *args: str, env: Optional[Dict[str, str]] = None,
               cwd: str = ROOT):
    self._folder = tempfile.mkdtemp(prefix="kqreg-trainer-")
    self._out = os.path.join(self._folder, "stdout")
    self._err = os.path.join(self._folder, "stderr")
    self._process = _fork_server().Process(
        target=_main, args=(module, list(args), dict(env or os.environ), cwd,
                            self._out, self._err))
    self._process.start()
    self.pid = self._process.pid
    self.returncode: Optional[int] = None
    self.stdout = self.stderr = ""

  def poll(self) -> Optional[int]:
    return self._process.exitcode

  def send_signal(self, signum: int) -> None:
    os.kill(self.pid, signum)

  def wait(self, timeout: float = 600) -> "TrainerProcess":
    self._process.join(timeout)
    timed_out = self._process.exitcode is None
    if timed_out:
      self._process.kill()
      self._process.join()
    self.returncode = self._process.exitcode
    self.stdout, self.stderr = self._read(self._out), self._read(self._err)
    shutil.rmtree(self._folder)
    if timed_out:
      raise TimeoutError(f"trainer did not finish in {timeout:.0f}s: "
                         f"{self.stderr[-2000:]}")
    return self

  @staticmethod
  def _read(path: str) -> str:
    with open(path, errors="replace") as f:
      return f.read()


def run(module: str, *args: str, env: Optional[Dict[str, str]] = None,
        cwd: str = ROOT, timeout: float = 600) -> TrainerProcess:
  """Runs `python -m module *args` to its end (see the module docstring)."""
  return TrainerProcess(module, *args, env=env, cwd=cwd).wait(timeout)


def history_epochs(model_dir: str):
  """The epochs a run's history.csv holds, in file order ([] if none)."""
  path = os.path.join(model_dir, "history.csv")
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    return [row["epoch"] for row in csv.DictReader(f)]
