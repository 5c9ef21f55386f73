"""One writer per run dir: a lock file with a lease, safe on shared filesystems.

Two trainers started on one model dir would both append every epoch to
history.csv and both write the BackupAndRestore backup. `RunLock` makes the
second one fail fast with `RunLocked`, naming who holds the dir.

The lock is `<model_dir>/.kqreg.lock`, created with O_CREAT|O_EXCL (atomic on
local filesystems and NFSv3+), holding JSON:
{host, pid, started, lease_expires, token} plus `boot_id` and `pid_start`
where the OS exposes them. fcntl/flock locks are not used: on NFS they depend
on a lock daemon that is often missing or unreliable, and a node that dies
can leave them held.

A lock is stale, and taken over, when:
  * same host (hostname and boot id match): its pid is gone, or the pid now
    belongs to another process (start time differs, or it is our own pid
    but not one of our locks -- containers reuse small pids on restart);
  * another host (or the same name after a reboot): its lease has expired.
    The holder renews the lease every lease/3 s, so this happens only when
    the holder is dead or hung for a whole lease. Clocks of the nodes must
    agree to well within the lease;
  * the file is empty or not a lock record and older than `grace` s (the
    writer died between creating and writing it); a younger one is held.

Acquiring goes through a gate, `.kqreg.lock.gate`, created with O_EXCL and
held for a few file operations: inside it a process reads the lock, raises
`RunLocked` if it is live, or renames a stale one to a unique tomb name,
checks the tomb holds the very bytes it judged stale (else puts it back),
deletes it and creates its own. So of any number of processes taking over
one stale lock, exactly one wins, and it knows it took over. A gate left by
a process that died inside it is removed once older than `grace`.

Example:
  >>> import tempfile
  >>> with tempfile.TemporaryDirectory() as d:
  ...   with RunLock(d) as lock:
  ...     print(owner_of(d)["pid"] == os.getpid(), is_locked_by_live_owner(d))
  ...   print(owner_of(d))
  True True
  None
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, NamedTuple, Optional, Set

__all__ = ["LOCK_NAME", "DEFAULT_LEASE", "DEFAULT_GRACE", "RunLock",
           "RunLockError", "RunLocked", "RunLockLost", "owner_of",
           "is_locked_by_live_owner", "describe_owner"]

LOCK_NAME = ".kqreg.lock"
DEFAULT_LEASE = 120.0  # seconds; must exceed clock skew plus a long GC/IO stall
DEFAULT_GRACE = 10.0  # seconds an unreadable lock (or gate) is respected

_REQUIRED = {"host": str, "pid": int, "token": str,
             "started": (int, float), "lease_expires": (int, float)}

# Tokens of the locks this process holds: a record naming our own pid with
# another token was left by an earlier process that had this pid.
_HELD_TOKENS: Set[str] = set()
_HELD_TOKENS_LOCK = threading.Lock()


class RunLockError(RuntimeError):
  """Base class of the run lock's errors."""


class RunLocked(RunLockError):
  """The run dir is locked by a live owner; `owner` is its lock record.

  Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, RunLock(d):
    ...   try:
    ...     RunLock(d).acquire()
    ...   except RunLocked as e:
    ...     print(e.owner["pid"] == os.getpid(), "\\n" in str(e))
    True False
  """

  def __init__(self, owner: Dict[str, Any], model_dir: str = "",
               grace: float = DEFAULT_GRACE):
    self.owner = dict(owner)
    self.model_dir = model_dir
    self.grace = grace
    super().__init__(describe_owner(owner, model_dir, grace))

  def __reduce__(self):
    # The default would rebuild the error from its message alone.
    return (RunLocked, (self.owner, self.model_dir, self.grace))


class RunLockLost(RunLockError):
  """The lock was taken over (or could not be renewed): stop writing."""


class _State(NamedTuple):
  raw: bytes
  record: Optional[Dict[str, Any]]  # None: empty or not a lock record
  mtime: float


def _utc(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def describe_owner(owner: Dict[str, Any], model_dir: str = "",
                   grace: float = DEFAULT_GRACE) -> str:
  """One line naming who holds `model_dir` (the message of `RunLocked`).

  Example:
    >>> print(describe_owner({"host": "h", "pid": 1234, "started": 0.0,
    ...                       "lease_expires": 120.0, "token": "t"},
    ...                      "runs/a"))  # doctest: +ELLIPSIS
    run dir runs/a is being written by pid 1234 on host h since 1970-01-01 00:00:00 UTC; ...
  """
  where = model_dir or "?"
  if owner.get("unreadable"):
    age = max(0.0, time.time() - float(owner.get("mtime", time.time())))
    return (f"run dir {where} has a lock file {LOCK_NAME} that is being "
            f"written or is unreadable ({age:.0f} s old); retry in a few "
            f"seconds (an unreadable lock older than {grace:g} s is taken "
            "over automatically)")
  text = (f"run dir {where} is being written by pid {owner.get('pid')} on "
          f"host {owner.get('host')} since {_utc(owner.get('started', 0))}; "
          "wait for it or stop it (a lock left by a dead process is taken "
          "over automatically")
  if owner.get("host") != socket.gethostname():
    # From another host a dead owner is only known by its lapsed lease.
    text += (", from another host once its lease ends at "
             f"{_utc(owner.get('lease_expires', 0))}")
  return text + ")"


def _boot_id() -> Optional[str]:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip() or None
  except OSError:
    return None


def _pid_start(pid: int) -> Optional[int]:
  """The process's start time in clock ticks since boot (Linux), or None."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      stat = f.read()
    # The command name (field 2) may hold spaces and parentheses.
    return int(stat[stat.rindex(b")") + 2:].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  if pid <= 0:
    return True  # not a real owner pid; never guess it dead
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # exists, owned by another user
  except OSError:
    return True
  return True


def _parse(raw: bytes) -> Optional[Dict[str, Any]]:
  try:
    record = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, ValueError):
    return None
  if not isinstance(record, dict):
    return None
  for key, kind in _REQUIRED.items():
    if not isinstance(record.get(key), kind) or isinstance(record[key], bool):
      return None
  return record


def _read(path: str) -> Optional[_State]:
  """The lock file's bytes, record and mtime; None when there is none."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
      mtime = os.fstat(f.fileno()).st_mtime  # of the inode just read
  except FileNotFoundError:
    return None
  return _State(raw, _parse(raw), mtime)


def _read_raw(path: str) -> Optional[bytes]:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    return None


def _owner(state: _State) -> Dict[str, Any]:
  if state.record is not None:
    return dict(state.record)
  return {"unreadable": True, "mtime": state.mtime}


def _stale_reason(state: _State, grace: float,
                  now: Optional[float] = None) -> Optional[str]:
  """Why the lock in `state` may be taken over, or None if it is held."""
  now = time.time() if now is None else now
  record = state.record
  if record is None:
    age = now - state.mtime
    return (f"unreadable lock file {age:.0f} s old" if age > grace else None)
  pid, host = record["pid"], record["host"]
  boot = record.get("boot_id")
  this_boot = _boot_id()
  same_machine = (host == socket.gethostname() and
                  (boot is None or this_boot is None or boot == this_boot))
  if same_machine:
    if pid == os.getpid():
      with _HELD_TOKENS_LOCK:
        ours = record["token"] in _HELD_TOKENS
      return None if ours else (
          f"pid {pid} on host {host} is this process, which does not hold it "
          "(an earlier process had this pid)")
    if not _pid_alive(pid):
      return f"pid {pid} on host {host} is gone"
    recorded = record.get("pid_start")
    if recorded is not None:
      current = _pid_start(pid)
      if current is not None and current != recorded:
        return f"pid {pid} on host {host} is gone (the pid was reused)"
    return None
  if record["lease_expires"] < now:
    return (f"the lease of pid {pid} on host {host} ended at "
            f"{_utc(record['lease_expires'])}")
  return None


def owner_of(model_dir: str) -> Optional[Dict[str, Any]]:
  """The lock record of `model_dir`, without taking it; None if unlocked.

  A stale lock is returned too (see `is_locked_by_live_owner`). An empty or
  corrupt lock file gives {"unreadable": True, "mtime": <its mtime>}.

  Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...   print(owner_of(d))
    ...   with RunLock(d, renew=False):
    ...     print(sorted(owner_of(d))[:5])
    None
    ['boot_id', 'host', 'lease_expires', 'pid', 'pid_start']
  """
  state = _read(os.path.join(model_dir, LOCK_NAME))
  return None if state is None else _owner(state)


def is_locked_by_live_owner(model_dir: str,
                            grace: float = DEFAULT_GRACE) -> bool:
  """True if a live process (this one included) holds `model_dir`'s lock.

  For sweeps that skip runs being written elsewhere; a stale lock gives
  False (the sweep's own `RunLock` will take it over).

  Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...   with RunLock(d):
    ...     print(is_locked_by_live_owner(d))
    ...   print(is_locked_by_live_owner(d))
    True
    False
  """
  state = _read(os.path.join(model_dir, LOCK_NAME))
  return state is not None and _stale_reason(state, grace) is None


class RunLock:
  """Holds `<model_dir>/.kqreg.lock` so only this process writes the run.

  Args:
    model_dir: an existing run dir (FileNotFoundError if it is missing).
    lease: seconds another host waits after the last renewal before it may
      take the lock over; renewed every lease/3 s by a daemon thread.
    grace: seconds an empty or unreadable lock file is respected.
    renew: False skips the renewal thread (short critical sections only).

  After `acquire()` (or entering the `with`): `took_over` is True when the
  lock was taken from a dead owner, whose record is `previous_owner` and
  the reason `takeover_reason`; `lost` becomes True if another process took
  the lock over or the lease could not be renewed in time (`check()` raises
  `RunLockLost` then).

  Example:
    >>> import json, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...   with open(os.path.join(d, LOCK_NAME), "w") as f:
    ...     json.dump({"host": socket.gethostname(), "pid": 2**22 + 1,
    ...                "started": 0.0, "lease_expires": 0.0,
    ...                "token": "old"}, f)
    ...   with RunLock(d) as lock:
    ...     print(lock.took_over, lock.previous_owner["token"], lock.lost)
    True old False
  """

  def __init__(self, model_dir: str, lease: float = DEFAULT_LEASE, *,
               grace: float = DEFAULT_GRACE, renew: bool = True):
    if not lease > 0:
      raise ValueError(f"lease must be positive, got {lease!r}")
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_NAME)
    self._gate = self.path + ".gate"
    self.lease = float(lease)
    self.grace = float(grace)
    self.renew = renew
    self.took_over = False
    self.previous_owner: Optional[Dict[str, Any]] = None
    self.takeover_reason: Optional[str] = None
    self.record: Optional[Dict[str, Any]] = None
    self._pid = os.getpid()
    self._lost = threading.Event()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._io = threading.Lock()  # renewal vs release on self.record

  @property
  def held(self) -> bool:
    return self.record is not None

  @property
  def lost(self) -> bool:
    return self._lost.is_set()

  @property
  def token(self) -> Optional[str]:
    return None if self.record is None else self.record["token"]

  def check(self) -> None:
    """Raises `RunLockLost` if another process now owns the run dir."""
    if self.lost:
      raise RunLockLost(
          f"run dir {self.model_dir}: this process (pid {self._pid}) lost "
          f"its lock {self.path}; another process may be writing the run")

  def _new_record(self) -> Dict[str, Any]:
    now = time.time()
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": now,
            "lease_expires": now + self.lease, "token": uuid.uuid4().hex,
            "boot_id": _boot_id(), "pid_start": _pid_start(pid)}

  def _create(self, record: Dict[str, Any]) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, json.dumps(record, sort_keys=True).encode("utf-8"))
      os.fsync(fd)  # readers on other NFS clients see it complete
    finally:
      os.close(fd)
    return True

  @staticmethod
  def _restore(tomb: str, path: str, raw: bytes) -> None:
    """Puts back a file moved to `tomb` by mistake, unless one replaced it."""
    try:
      os.link(tomb, path)  # unlike rename, never overwrites
    except FileExistsError:
      pass  # a lock's owner notices at its next renewal (lost)
    except OSError:  # no hard links on this filesystem
      try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
          os.write(fd, raw)
        finally:
          os.close(fd)
      except FileExistsError:
        pass
    _unlink(tomb)

  def _remove_if(self, path: str, raw: bytes) -> bool:
    """Removes `path` if it still holds `raw`; True if it did."""
    tomb = f"{self.path}.stale-{uuid.uuid4().hex}"
    try:
      os.rename(path, tomb)  # only one of several renamers gets the file
    except FileNotFoundError:
      return False
    moved = _read_raw(tomb)
    if moved != raw:
      # Changed between our read and the rename (a renewal or a new lock).
      self._restore(tomb, path, moved or b"")
      return False
    _unlink(tomb)
    return True

  def _enter_gate(self) -> Optional[bytes]:
    """Creates the gate; its bytes, or None while another process holds it."""
    mine = uuid.uuid4().hex.encode()
    try:
      fd = os.open(self._gate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      held = _read(self._gate)
      if held is not None and time.time() - held.mtime > self.grace:
        self._remove_if(self._gate, held.raw)  # its holder died inside
      return None
    try:
      os.write(fd, mine)
    finally:
      os.close(fd)
    return mine

  def _leave_gate(self, mine: bytes) -> None:
    if _read_raw(self._gate) == mine:
      _unlink(self._gate)

  def _try_acquire(self) -> Optional[Dict[str, Any]]:
    """One attempt inside the gate: our new record, or None if it is busy."""
    mine = self._enter_gate()
    if mine is None:
      return None
    try:
      state = _read(self.path)
      why = None if state is None else _stale_reason(state, self.grace)
      if state is not None and why is None:
        raise RunLocked(_owner(state), self.model_dir, self.grace)
      if state is not None and not self._remove_if(self.path, state.raw):
        return None  # changed under us (a lapsed owner renewed): look again
      record = self._new_record()
      with _HELD_TOKENS_LOCK:
        _HELD_TOKENS.add(record["token"])  # before it is visible
      if not self._create(record):
        # Someone created it without the gate (its holder's gate was taken
        # as stale): theirs stands.
        with _HELD_TOKENS_LOCK:
          _HELD_TOKENS.discard(record["token"])
        return None
      if state is not None:
        self.took_over = True
        self.previous_owner = _owner(state)
        self.takeover_reason = why
      return record
    finally:
      self._leave_gate(mine)

  def acquire(self) -> "RunLock":
    """Takes the lock, or raises `RunLocked` naming the live owner."""
    if self.held:
      raise RunLockError(f"{self.path} is already held by this RunLock")
    if not os.path.isdir(self.model_dir):
      raise FileNotFoundError(
          f"run dir {self.model_dir} does not exist; create it before "
          "locking it")
    self.took_over, self.previous_owner, self.takeover_reason = (
        False, None, None)
    start = time.monotonic()
    # A gate is held for milliseconds; only one left by a dead process (it
    # expires after `grace`) makes others wait long.
    deadline = start + self.grace + 5.0
    while True:
      record = self._try_acquire()
      if record is not None:
        break
      if time.monotonic() > deadline:
        raise RunLockError(
            f"run dir {self.model_dir}: could not pass {self._gate} within "
            f"{deadline - start:.0f} s; remove it if no kqreg process is "
            "starting in this dir")
      time.sleep(0.005)
    self.record = record
    self._pid = record["pid"]
    self._lost.clear()
    self._stop.clear()
    if self.renew:
      self._thread = threading.Thread(
          target=self._renew_loop, name=f"RunLock({self.model_dir})",
          daemon=True)
      self._thread.start()
    return self

  def _renew_once(self) -> bool:
    """Extends the lease; False if the file is no longer ours."""
    with self._io:
      if self.record is None:
        return True
      current = _read(self.path)
      if (current is None or current.record is None or
          current.record["token"] != self.record["token"]):
        return False
      record = dict(self.record, lease_expires=time.time() + self.lease)
      tmp = f"{self.path}.{record['token']}.tmp"
      with open(tmp, "wb") as f:
        f.write(json.dumps(record, sort_keys=True).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
      # Readers see the old record or the new one, never a partial one.
      os.replace(tmp, self.path)
      self.record = record
      return True

  def _renew_loop(self) -> None:
    while not self._stop.wait(self.lease / 3):
      try:
        ours = self._renew_once()
      except OSError:
        ours = True  # transient (e.g. NFS); retried at the next tick
        record = self.record
        if record is not None and time.time() > record["lease_expires"]:
          ours = False  # others may already have taken it over
      if not ours:
        self._lost.set()
        return

  def release(self) -> None:
    """Removes the lock if it is still ours; calling it again does nothing."""
    self._stop.set()
    thread, self._thread = self._thread, None
    if thread is not None and thread is not threading.current_thread():
      thread.join()
    with self._io:
      record, self.record = self.record, None
    if record is None:
      return
    with _HELD_TOKENS_LOCK:
      _HELD_TOKENS.discard(record["token"])
    if os.getpid() != record["pid"]:
      return  # a forked child: the parent still holds the lock
    current = _read(self.path)
    if (current is None or current.record is None or
        current.record["token"] != record["token"]):
      self._lost.set()
      return  # taken over: the file is someone else's now
    self._remove_if(self.path, current.raw)

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc_info: Any) -> None:
    self.release()

  def __repr__(self) -> str:
    state = "lost" if self.lost else "held" if self.held else "free"
    return f"RunLock({self.model_dir!r}, {state})"


def _unlink(path: str) -> None:
  try:
    os.unlink(path)
  except FileNotFoundError:
    pass
