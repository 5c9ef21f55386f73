"""One writer per run dir, as users meet it: trainers and sweeps on locked dirs.

The lock itself (kqreg/runs/lock.py) is tested in test_run_lock.py; here a
trainer refuses a dir another process writes, takes over the lock of a
killed one and resumes, and two identical sweeps share one output folder.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import trainer_process

from kqreg.runs import lock as lock_lib

TINY = ["--dataset=kqreg_digits", "--model=cnn", "--train_examples=64", "--batch_size=32",
        "--verbose=0", "--noise_analysis=false"]


_epochs = trainer_process.history_epochs


def _lines(text):
  return [l for l in text.splitlines() if l.strip()]


def test_trainer_on_a_locked_model_dir_exits_2_in_one_line(tmp_path):
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent(f"""
          import sys
          from kqreg.runs import lock
          with lock.RunLock({str(model_dir)!r}):
            print("held", flush=True)
            sys.stdin.read()
          """)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    before = (model_dir / lock_lib.LOCK_NAME).read_bytes()
    result = trainer_process.run("trainers.classify", *TINY, "--epochs=1",
                                 f"--model_dir={model_dir}", timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = _lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("kqreg-classify: error: run dir ")
    assert f"pid {holder.pid} on host " in lines[0]
    # The owner's dir is untouched: its lock stays, nothing else appears.
    assert os.listdir(model_dir) == [lock_lib.LOCK_NAME]
    assert (model_dir / lock_lib.LOCK_NAME).read_bytes() == before
  finally:
    holder.stdin.close()
    holder.wait(timeout=30)


def test_lock_of_a_killed_trainer_is_taken_over_and_the_run_resumes(tmp_path):
  model_dir = str(tmp_path / "run")
  args = [*TINY, "--bits=w4", "--epochs=5", f"--model_dir={model_dir}"]
  proc = trainer_process.TrainerProcess("trainers.classify", *args)
  deadline = time.time() + 300
  while len(_epochs(model_dir)) < 2 and time.time() < deadline and proc.poll() is None:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  done = _epochs(model_dir)
  assert 2 <= len(done) < 5, done
  owner = lock_lib.owner_of(model_dir)
  assert owner is not None and owner["pid"] == proc.pid  # left behind
  assert not lock_lib.is_locked_by_live_owner(model_dir)
  result = trainer_process.run("trainers.classify", *args, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  took_over = [l for l in _lines(result.stdout) if "took over" in l]
  assert len(took_over) == 1, result.stderr[-3000:]
  assert f"pid {proc.pid}" in took_over[0] and "resum" in took_over[0]
  assert _epochs(model_dir) == [str(e) for e in range(5)]
  assert '"resumed": true' in result.stdout
  assert lock_lib.owner_of(model_dir) is None  # released at the end


def test_two_identical_sweeps_at_once_write_each_epoch_once(tmp_path):
  out = tmp_path / "sweep"
  args = [*TINY, "--sweep_bits=fp,w4", "--seeds=0,1", "--epochs=2", "--workers=1",
          f"--output_dir={out}"]
  sweeps = [trainer_process.TrainerProcess("trainers.sweep", *args) for _ in range(2)]
  finished = [s.wait(timeout=900) for s in sweeps]
  for s in finished:
    assert s.returncode == 0, s.stderr[-3000:]
    assert sum(l.startswith("[") and "bits=" in l for l in s.stdout.splitlines()) == 4
  names = sorted(os.listdir(out / "runs"))
  assert names == ["fp_seed0", "fp_seed1", "w4_seed0", "w4_seed1"]
  for name in names:
    run_dir = out / "runs" / name
    assert _epochs(run_dir) == ["0", "1"], name
    assert (run_dir / "result.json").exists()
    assert not (run_dir / lock_lib.LOCK_NAME).exists()
  # Every run trained once: by one sweep, and found finished by the other.
  skipped = sum(s.stdout.count("skipped (done)") for s in finished)
  assert skipped == 4, [s.stdout for s in finished]
  tables = [s.stdout[s.stdout.index("| bits |"):s.stdout.index("Verdict:")]
            for s in finished]
  assert tables[0] == tables[1]
  assert (out / "report.md").exists() and (out / "results.csv").exists()
  assert not (out / lock_lib.LOCK_NAME).exists()
