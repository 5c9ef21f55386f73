"""kqreg.runs.lock: one writer per run dir, across processes and hosts.

A second process is a real one (`sys.executable -c`), started from a prelude
that loads lock.py by path so it does not pay for TensorFlow's import.
"""

import doctest
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

LOCK_PY = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "kqreg", "runs", "lock.py")

try:
  from kqreg.runs import lock
except Exception:  # pylint: disable=broad-except
  # kqreg's __init__ (and kqreg/runs/__init__.py) are being rewritten while
  # the package is restructured; lock.py is standard library only, so load it
  # by path rather than let a half-written package hide these tests.
  _spec = importlib.util.spec_from_file_location("kqreg_runs_lock", LOCK_PY)
  lock = importlib.util.module_from_spec(_spec)
  sys.modules[_spec.name] = lock
  _spec.loader.exec_module(lock)

RunLock, RunLocked, RunLockLost = lock.RunLock, lock.RunLocked, lock.RunLockLost
HOST = socket.gethostname()

_PRELUDE = textwrap.dedent(f"""\
    import importlib.util, json, os, sys, time
    spec = importlib.util.spec_from_file_location("kqreg_runs_lock", {LOCK_PY!r})
    lock = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = lock
    spec.loader.exec_module(lock)
    """)


def _child(code: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)


def _dead_pid() -> int:
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  child.wait()  # reaped: the pid names no process now
  return child.pid


def _lock_path(d) -> str:
  return os.path.join(str(d), lock.LOCK_NAME)


def _write_record(d, **fields) -> dict:
  now = time.time()
  record = {"host": HOST, "pid": _dead_pid(), "started": now - 60,
            "lease_expires": now + 60, "token": "previous"}
  record.update(fields)
  with open(_lock_path(d), "w") as f:
    json.dump(record, f)
  return record


def _read_record(d) -> dict:
  with open(_lock_path(d)) as f:
    return json.load(f)


def test_acquire_release_round_trip(tmp_path):
  with RunLock(str(tmp_path)) as held:
    record = _read_record(tmp_path)
    assert record["host"] == HOST and record["pid"] == os.getpid()
    assert record["token"] == held.token
    assert record["lease_expires"] > record["started"]
    assert lock.owner_of(str(tmp_path))["token"] == held.token
    assert lock.is_locked_by_live_owner(str(tmp_path))
    assert held.held and not held.took_over and held.previous_owner is None
  assert not os.path.exists(_lock_path(tmp_path))
  assert lock.owner_of(str(tmp_path)) is None
  assert not lock.is_locked_by_live_owner(str(tmp_path))
  held.release()  # idempotent
  assert os.listdir(tmp_path) == []  # no tomb, temp or break file left
  with RunLock(str(tmp_path)):  # free again
    pass


def test_missing_dir_is_a_clear_error(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    RunLock(missing).acquire()
  assert not os.path.exists(missing)


def test_second_process_is_refused_with_one_line_message(tmp_path):
  holder = _child(f"""
      with lock.RunLock({str(tmp_path)!r}):
        print("held", flush=True)
        sys.stdin.read()
      """)
  try:
    assert holder.stdout.readline().strip() == "held"
    before = _read_record(tmp_path)
    assert before["pid"] == holder.pid
    assert lock.is_locked_by_live_owner(str(tmp_path))
    with pytest.raises(RunLocked) as caught:
      RunLock(str(tmp_path)).acquire()
    message = str(caught.value)
    assert "\n" not in message
    assert f"pid {holder.pid} on host {HOST} since " in message
    assert str(tmp_path) in message and " UTC" in message
    assert caught.value.owner["pid"] == holder.pid
    assert _read_record(tmp_path) == before  # the holder's lock untouched
  finally:
    holder.stdin.close()
    assert holder.wait(timeout=10) == 0
  assert not os.path.exists(_lock_path(tmp_path))  # the holder released it


def test_dead_owner_is_taken_over(tmp_path):
  # A far lease: on the owner's own host the dead pid decides, not the lease.
  old = _write_record(tmp_path, lease_expires=time.time() + 3600)
  with RunLock(str(tmp_path)) as taken:
    assert taken.took_over
    assert taken.previous_owner == old
    assert f"pid {old['pid']}" in taken.takeover_reason
    assert _read_record(tmp_path)["token"] == taken.token != old["token"]
    assert os.listdir(tmp_path) == [lock.LOCK_NAME]  # tomb and break gone


def test_reused_pid_is_stale(tmp_path):
  # An earlier process with our pid (containers restart with the same pid).
  _write_record(tmp_path, pid=os.getpid(), token="earlier")
  with RunLock(str(tmp_path)) as taken:
    assert taken.took_over and taken.previous_owner["token"] == "earlier"
  # A live pid whose start time differs from the recorded one.
  live = _child("sys.stdin.read()")
  try:
    start = lock._pid_start(live.pid)  # pylint: disable=protected-access
    assert start is not None, "the lock reads start times from /proc (Linux)"
    _write_record(tmp_path, pid=live.pid, pid_start=start - 1)
    with RunLock(str(tmp_path)) as taken:
      assert taken.took_over and taken.previous_owner["pid"] == live.pid
    _write_record(tmp_path, pid=live.pid, pid_start=start)
    with pytest.raises(RunLocked):
      RunLock(str(tmp_path)).acquire()
  finally:
    live.stdin.close()
    live.wait(timeout=10)


@pytest.mark.parametrize("lease_left", [-1.0, 60.0])
def test_other_host_is_judged_by_its_lease(tmp_path, lease_left):
  # pid 1 is alive here: only the lease may decide for another host.
  old = _write_record(tmp_path, host="node-7.invalid", pid=1,
                      lease_expires=time.time() + lease_left)
  if lease_left < 0:
    with RunLock(str(tmp_path)) as taken:
      assert taken.took_over and taken.previous_owner == old
      assert "lease" in taken.takeover_reason
      assert _read_record(tmp_path)["host"] == HOST
  else:
    assert lock.is_locked_by_live_owner(str(tmp_path))
    with pytest.raises(RunLocked) as caught:
      RunLock(str(tmp_path)).acquire()
    message = str(caught.value)
    assert "\n" not in message
    assert "pid 1 on host node-7.invalid since " in message
    assert _read_record(tmp_path) == old


_RACER = """
    model_dir, sync = sys.argv[1], sys.argv[2]
    open(os.path.join(sync, f"ready-{os.getpid()}"), "w").close()
    give_up = time.time() + 20
    while not os.path.exists(os.path.join(sync, "go")) and time.time() < give_up:
      time.sleep(0.001)
    try:
      with lock.RunLock(model_dir) as held:
        print("won", held.took_over, flush=True)
        sys.stdin.read()  # hold it until every racer has answered
    except lock.RunLocked as e:
      print("locked", e.owner.get("pid"), flush=True)
    """


@pytest.mark.parametrize("round_", range(3))
def test_racing_takers_of_a_stale_lock_one_wins(tmp_path, round_):
  del round_  # three rounds: a broken takeover does not lose every time
  model_dir, sync = tmp_path / "run", tmp_path / "sync"
  model_dir.mkdir()
  sync.mkdir()
  _write_record(model_dir)  # its pid is dead
  racers = [subprocess.Popen(
      [sys.executable, "-c", _PRELUDE + textwrap.dedent(_RACER),
       str(model_dir), str(sync)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(8)]
  try:
    deadline = time.time() + 20
    while len(os.listdir(sync)) < len(racers) and time.time() < deadline:
      time.sleep(0.005)
    (sync / "go").touch()
    answers = {r.pid: r.stdout.readline().split() for r in racers}
  finally:
    for r in racers:
      r.stdin.close()
    for r in racers:
      r.wait(timeout=20)
  winners = [pid for pid, a in answers.items() if a[:1] == ["won"]]
  assert len(winners) == 1, answers
  assert answers[winners[0]] == ["won", "True"]
  losers = [a for pid, a in answers.items() if pid != winners[0]]
  assert losers == [["locked", str(winners[0])]] * (len(racers) - 1), answers
  assert os.listdir(model_dir) == []  # the winner released, nothing left


def test_lease_renewal_extends_lease(tmp_path, monkeypatch):
  with RunLock(str(tmp_path), lease=0.3) as held:
    first = _read_record(tmp_path)
    time.sleep(0.5)
    later = _read_record(tmp_path)
    assert later["token"] == first["token"]
    assert later["lease_expires"] > first["lease_expires"] + 0.1
    assert later["lease_expires"] > time.time()
    assert not held.lost
    held.check()
    # Seen from another host, the renewed lease keeps the run locked.
    monkeypatch.setattr(socket, "gethostname", lambda: "node-8.invalid")
    assert lock.is_locked_by_live_owner(str(tmp_path))
    with pytest.raises(RunLocked):
      RunLock(str(tmp_path)).acquire()


def _steal(d) -> dict:
  """Another host takes the lock over (as it would after a lapsed lease)."""
  thief = {"host": "node-9.invalid", "pid": 4321, "started": time.time(),
           "lease_expires": time.time() + 60, "token": "thief"}
  tmp = _lock_path(d) + ".thief"
  with open(tmp, "w") as f:
    json.dump(thief, f)
  os.replace(tmp, _lock_path(d))
  return thief


def test_release_keeps_a_lock_taken_over_by_another(tmp_path):
  # Without the renewal thread: release itself checks the token.
  held = RunLock(str(tmp_path), renew=False).acquire()
  thief = _steal(tmp_path)
  held.release()
  assert _read_record(tmp_path) == thief
  held.release()
  assert _read_record(tmp_path) == thief
  os.unlink(_lock_path(tmp_path))
  # With it: the holder learns it lost the lock, and still leaves it be.
  held = RunLock(str(tmp_path), lease=0.15).acquire()
  thief = _steal(tmp_path)
  deadline = time.time() + 5
  while not held.lost and time.time() < deadline:
    time.sleep(0.01)
  assert held.lost
  with pytest.raises(RunLockLost):
    held.check()
  assert _read_record(tmp_path) == thief  # not renewed over the thief's
  held.release()
  assert _read_record(tmp_path) == thief


@pytest.mark.parametrize("content", [b"", b'{"host": "node-1", "pi'])
def test_unreadable_lock_is_held_while_young_stale_when_old(tmp_path,
                                                            content):
  with open(_lock_path(tmp_path), "wb") as f:
    f.write(content)
  assert lock.owner_of(str(tmp_path))["unreadable"]
  assert lock.is_locked_by_live_owner(str(tmp_path))
  with pytest.raises(RunLocked) as caught:
    RunLock(str(tmp_path)).acquire()
  assert "\n" not in str(caught.value) and "unreadable" in str(caught.value)
  with open(_lock_path(tmp_path), "rb") as f:
    assert f.read() == content
  old = time.time() - 2 * lock.DEFAULT_GRACE
  os.utime(_lock_path(tmp_path), (old, old))
  assert not lock.is_locked_by_live_owner(str(tmp_path))
  with RunLock(str(tmp_path)) as taken:
    assert taken.took_over and taken.previous_owner["unreadable"]
    assert _read_record(tmp_path)["token"] == taken.token


def test_doctests():
  results = doctest.testmod(lock)
  assert results.attempted >= 5
  assert results.failed == 0
