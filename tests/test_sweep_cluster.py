"""kqreg-sweep on a Ray cluster (--ray_address), and quiet sweep workers.

A real two-node Ray cluster runs on loopback, started by a fixture with
`ray start` (one CPU per node, so two runs at once land on both nodes) and
always stopped in teardown: each node runs in a process group of its own,
killed by its id (never `ray stop`, which stops every Ray process of the
machine, another user's too). Every wait is bounded.
"""

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import trainer_process

from kqreg.runs import lock as lock_lib

# Two runs (one per node) of the smallest classifier; --deterministic so the
# cluster's numbers can be compared with a local sweep's.
TINY = ["--dataset=kqreg_digits", "--model=cnn", "--train_examples=64", "--batch_size=32",
        "--verbose=0", "--noise_analysis=false", "--deterministic"]
GRID = ["--sweep_bits=fp,w4", "--seeds=0"]
# What TensorFlow's C++ prints at start-up (absl, CUDA probing, CPU features).
TF_STARTUP = re.compile(r"absl::InitializeLog|cudart_stub|cuda_|cuInit|oneDNN|"
                        r"cpu_feature_guard|^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] bits=(\S+) seed=(\d+): .* on (\S+)/(\w+)\]", re.M)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_epochs = trainer_process.history_epochs


def _csv_without_timing(path):
  with open(path, newline="") as f:
    return [{k: v for k, v in row.items() if "time" not in k}
            for row in csv.DictReader(f)]


def _report_without_timing(path):
  text = open(path).read()
  text = re.sub(r"```.*?```", "", text, flags=re.S)  # the command
  return [l for l in text.splitlines() if not l.startswith("Wall time:")]


def test_quiet_worker_keeps_python_stderr_and_drops_cpp_lines():
  from kqreg.study.sweep import workers
  code = (f"exec({workers.QUIET_WORKER_SOURCE!r}, {{}})\n"
          "import os, sys, warnings\n"
          "os.write(2, b'I0000 cudart_stub.cc:31] from C++\\n')\n"
          "warnings.warn('kqreg warning')\n"
          "print('python line', file=sys.stderr)\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0, result.stderr
  assert "from C++" not in result.stderr
  assert "kqreg warning" in result.stderr and "python line" in result.stderr


def _local_sweep_args(folder):
  # A fresh data dir: the sweep prepares the set once, before its workers
  # start (two preparing it at once would race).
  return [*TINY, *GRID, "--epochs=2", "--workers=2", f"--data_dir={folder / 'tfds'}",
          f"--output_dir={folder / 'sweep'}"]


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
  """The grid trained by the local pool (one thread per worker, as on Ray)."""
  folder = tmp_path_factory.mktemp("local")
  result = trainer_process.run("trainers.sweep", *_local_sweep_args(folder), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return folder / "sweep", result


def test_local_sweep_reports_and_skips_finished_runs(local_sweep):
  out, result = local_sweep
  # Two worker processes: the runs finish in any order, the report keeps the grid's.
  assert "| bits | seeds | train acc" in result.stdout and "Verdict:" in result.stdout
  for name in ("report.md", "results.csv", "runs.csv", "val_loss.png", "gap.png", "noise.png"):
    assert (out / name).exists(), name
  assert sorted(os.listdir(out / "runs")) == ["fp_seed0", "w4_seed0"]
  again = trainer_process.run("trainers.sweep", *_local_sweep_args(out.parent), timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("skipped (done)") == 2


def test_sweep_stderr_holds_no_tensorflow_startup_lines(local_sweep):
  _, result = local_sweep
  assert not TF_STARTUP.search(result.stderr), result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith("[")]
  assert len(lines) == 2, result.stdout
  assert all("left" in l and "ETA" in l for l in lines), lines
  assert "0 left" in lines[-1]


def _processes():
  """pid -> (ppid, process group) of every process, from /proc."""
  table = {}
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat", "rb") as f:
        stat = f.read()
      fields = stat[stat.rindex(b")") + 2:].split()
      table[int(name)] = (int(fields[1]), int(fields[2]))
    except (OSError, ValueError, IndexError):
      pass
  return table


class _Cluster:
  """A Ray cluster of `ray start` nodes on 127.0.0.1, one process group each.

  A node's daemons stay in the group its `ray start` was given; its raylet
  starts the workers, which make groups of their own: a node is its group
  plus the children of its members.
  """

  def __init__(self, temp_dir):
    self.temp_dir = temp_dir
    self.port = _free_port()
    self.address = f"127.0.0.1:{self.port}"
    self.groups = []  # pgid of each node, head first
    # A dead node is declared dead after ~3 s rather than ~30 s.
    self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
                    RAY_health_check_period_ms="1000",
                    RAY_health_check_timeout_ms="1000",
                    RAY_health_check_failure_threshold="3")

  def _start(self, *args):
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--num-cpus=1",
               "--object-store-memory=100000000", "--disable-usage-stats", *args]
    proc = subprocess.Popen(command, env=self.env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.groups.append(proc.pid)  # its daemons stay in this group
    try:
      out, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
      proc.kill()
      raise
    assert proc.returncode == 0, out[-3000:]

  def start(self):
    self._start("--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                "--include-dashboard=false", f"--temp-dir={self.temp_dir}")
    self._start(f"--address={self.address}")

  def members(self, index):
    """The pids of node `index`: its group and their descendants."""
    table = _processes()
    pids = {pid for pid, (_, group) in table.items() if group == self.groups[index]}
    while True:
      more = {pid for pid, (parent, _) in table.items() if parent in pids} - pids
      if not more:
        return pids
      pids |= more

  def kill_node(self, index):
    for pid in self.members(index):
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass

  def stop(self):
    for index in reversed(range(len(self.groups))):
      self.kill_node(index)


@pytest.fixture(scope="module")
def cluster():
  pytest.importorskip("ray")
  temp_dir = tempfile.mkdtemp(prefix="kqreg-ray-")
  nodes = _Cluster(temp_dir)
  try:
    nodes.start()
    yield nodes
  finally:
    nodes.stop()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_sweep(cluster, out, *extra, timeout=600):
  return trainer_process.run("trainers.sweep", *TINY, f"--ray_address={cluster.address}",
                             f"--output_dir={out}", *extra, timeout=timeout)


def test_ray_sweep_runs_on_both_nodes_and_reports_as_a_local_sweep(cluster, local_sweep,
                                                                   tmp_path):
  out = tmp_path / "sweep"
  result = _ray_sweep(cluster, out, *GRID, "--epochs=2")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = PROGRESS.findall(result.stdout)
  assert len(lines) == 2, result.stdout
  assert len({node for *_, node in lines}) == 2, lines  # both nodes ran a run
  assert not TF_STARTUP.search(result.stderr), result.stderr[-3000:]
  local_out, _ = local_sweep
  assert sorted(os.listdir(out / "runs")) == sorted(os.listdir(local_out / "runs"))
  for name in ("results.csv", "runs.csv"):
    assert _csv_without_timing(out / name) == _csv_without_timing(local_out / name), name
  assert (_report_without_timing(out / "report.md") ==
          _report_without_timing(local_out / "report.md"))
  # Rerun: finished runs are skipped, on the cluster too.
  again = _ray_sweep(cluster, out, *GRID, "--epochs=2")
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("skipped (done)") == 2


def test_unreachable_ray_address_is_one_line_exit_2(tmp_path):
  out = tmp_path / "sweep"
  start = time.time()
  result = trainer_process.run("trainers.sweep", *TINY, *GRID, "--epochs=1",
                               f"--ray_address=127.0.0.1:{_free_port()}",
                               f"--output_dir={out}", timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "--ray_address" in lines[0], result.stderr[-3000:]
  assert not out.exists()
  assert time.time() - start < 60


def _owner(model_dir):
  owner = lock_lib.owner_of(str(model_dir))
  return owner.get("pid") if owner else None


def test_killed_node_run_is_retried_elsewhere_and_resumes(cluster, tmp_path):
  """Last in the file: it kills the second node."""
  out = tmp_path / "sweep"
  sweep = trainer_process.TrainerProcess(
      "trainers.sweep", *TINY, *GRID, "--epochs=10", f"--ray_address={cluster.address}",
      f"--output_dir={out}")
  victim, deadline = None, time.time() + 300
  while victim is None and time.time() < deadline and sweep.poll() is None:
    for name in ("fp_seed0", "w4_seed0"):
      run_dir = out / "runs" / name
      if (_owner(run_dir) in cluster.members(1) and
          1 <= len(_epochs(run_dir)) < 7):
        victim = run_dir
    time.sleep(0.2)
  assert victim is not None, "no run reached an epoch on the second node in time"
  cluster.kill_node(1)
  result = sweep.wait(timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ("fp_seed0", "w4_seed0"):
    assert _epochs(out / "runs" / name) == [str(e) for e in range(10)], name
  with open(victim / "result.json") as f:
    assert json.load(f)["resumed"] is True
  assert len(PROGRESS.findall(result.stdout)) == 2, result.stdout
