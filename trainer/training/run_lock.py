"""One owner per run directory: an exclusive lock file in RUN_DIR.

    lock = own_run_dir(config.run_dir, config.store.url)   # the trainer, before it writes
    try: ... finally: lock.release()

    with RunDirLock(out, role="sweep"): ...                 # any other writer of a directory

Two trainers on one run_dir would interleave metrics.jsonl, overwrite each
other's config.json and checkpoints, and leave a directory whose files come
from different runs. So the trainer takes `RUN_DIR/run.lock` before it writes
anything there (config.json included); a second one stops with one line
naming the owner (`RunDirLockedError`, a ValueError: `python -m trainer` exits 2).

The lock file holds the owner's host, pid, start time, role and command. It
is made complete under a temporary name and published with `os.link`, which
is atomic and fails if the name exists, also across hosts on a shared
filesystem (NFS included), so two starters can never both win. It is removed
on release (normal end, exception, SIGINT/SIGTERM: the loop's `finally`).
After SIGKILL, a crash or a reboot the file stays; the next starter on the
same host finds the owner gone (no such pid, a pid reused by a process that
started later, or another boot) and takes the lock over, with a warning. A
lock from another host cannot be probed: the message names that host and pid
and the file to delete once that run is known to be gone.

Multi-process JAX runs: process 0 owns the lock for all; the others learn the
outcome through a broadcast, so every process stops (or goes on) together.

Other tools on a run directory (the decision, and why):
- `trainer.evaluate` and `trainer.export_hf` read the run's export/, which the
  trainer writes when training ends (and rewrites on a resumed export): while
  a live process holds the lock they refuse with one line naming it, instead
  of scoring or converting a missing or half-written model (and evaluate would
  file its eval.json under a model about to be replaced). They take no lock
  themselves: reading a finished run needs no owner, and evaluate's eval.json
  update is a read-merge-rename of a few milliseconds.
- `trainer.sweep` locks its --out directory (role "sweep") for as long as it
  runs: a second sweep on the same --out stops at once instead of starting
  every point again into the same run dirs; each point's trainer still locks
  its own run_dir (so a hand-started trainer on a point is refused too).
- Read-only tools (`trainer.report`, metrics.jsonl readers) ignore the lock.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import uuid

LOCK_FILE = "run.lock"

log = logging.getLogger(__name__)


class RunDirError(ValueError):
    """run_dir cannot be used: it is a file, or it and the store contain one another."""


class RunDirLockedError(RunDirError):
    """Another live process owns the run directory."""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:  # Not Linux: pid liveness alone decides.
        return ""


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on; [] where there is no /proc (not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return []
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rpartition(")")[2].split()


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" if unknown.

    With the boot id it tells a live owner from an unrelated process that
    reused its pid.
    """
    fields = _stat_fields(pid)
    return fields[19] if len(fields) > 19 else ""  # Field 22.


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Exists, owned by another user.
        return True
    return True


def owner_alive(info: dict) -> bool:
    """Whether the process a lock file names may still run.

    Only a lock written on this host can be probed; another host's owner is
    taken as alive (the message then says how to clear it by hand).
    """
    if info.get("host") != socket.gethostname():
        return True
    if info.get("boot_id") and _boot_id() and info["boot_id"] != _boot_id():
        return False  # Written before the last reboot.
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not _pid_alive(pid):
        return False
    if _stat_fields(pid)[:1] == ["Z"]:  # Killed, not yet reaped by its parent.
        return False
    started = _process_start(pid)
    return not (info.get("process_start") and started and started != info["process_start"])


def describe(info: dict) -> str:
    """'trainer pid 123 on host h (started 2026-12-06T05:00:00Z)'."""
    return (
        f"{info.get('role', 'a process')} pid {info.get('pid')} on host {info.get('host')} "
        f"(started {info.get('started', '?')})"
    )


def read_lock(run_dir: str) -> dict | None:
    """The lock file's contents; None if there is none; {} if it is unreadable."""
    try:
        with open(os.path.join(run_dir, LOCK_FILE), encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def live_owner(run_dir: str) -> dict | None:
    """The lock's contents if a live process (or an unprobeable one) owns `run_dir`."""
    info = read_lock(run_dir)
    if info is None or (info and not owner_alive(info)):
        return None
    return info


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url[len("file://") :]
    return None if "://" in url else url


def _contains(outer: str, inner: str) -> bool:
    outer, inner = os.path.realpath(outer), os.path.realpath(inner)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _enclosing_store(path: str) -> str | None:
    """The nearest directory at or above `path` that is a Zarr store root (a zarr.json)."""
    here = os.path.realpath(path)
    while True:
        if os.path.isfile(os.path.join(here, "zarr.json")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def check_run_dir(run_dir: str, store_url: str = "") -> None:
    """Refuses a run_dir that is a file, lies inside a store, or holds the run's store.

    Reads only; nothing is created. Raises RunDirError (one line, with the fix).
    """
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(
            f"run_dir {run_dir} exists and is not a directory; pass a new "
            f"--set run_dir=DIR (nothing was written)"
        )
    store = _enclosing_store(run_dir)
    if store is not None:
        where = (
            "is the Zarr store itself"
            if store == os.path.realpath(run_dir)
            else f"is inside the Zarr store {store}"
        )
        raise RunDirError(
            f"run_dir {run_dir} {where}; checkpoints "
            f"there would mix with the store's data: pass --set run_dir=DIR "
            f"outside it"
        )
    local = _local_path(store_url or "")
    if local and _contains(run_dir, local):
        raise RunDirError(
            f"run_dir {run_dir} contains the store {store_url}; pass --set "
            f"run_dir=DIR outside the store's directory"
        )


@contextlib.contextmanager
def _guard(run_dir: str):
    """flock on the directory itself: serializes stale-lock take-overs on this host
    (two starters must not both remove the old file and one the other's new one)."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # Closing releases the flock.


class RunDirLock:
    """The exclusive lock file `RUN_DIR/run.lock` (see the module doc).

    Args:
        run_dir: the directory to own; created if missing.
        role: who owns it ("trainer", "evaluate", "sweep"), shown to others.
    """

    def __init__(self, run_dir: str, role: str = "trainer"):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "role": role,
            "boot_id": _boot_id(),
            "process_start": _process_start(os.getpid()),
            "command": " ".join(sys.argv)[:500],
            "token": uuid.uuid4().hex,
        }
        self.held = False

    def acquire(self) -> RunDirLock:
        """Takes the lock; returns self.

        Raises:
            RunDirLockedError: a live process (or one on another host) owns it.
            RunDirError: run_dir is a file.
        """
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            check_run_dir(self.run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        tmp = f"{self.path}.{self.info['token']}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.info, f, indent=2)
        try:
            for _ in range(5):  # Each round either wins, refuses, or removed a stale lock.
                try:
                    os.link(tmp, self.path)  # Atomic; fails if the lock exists.
                    self.held = True
                    return self
                except FileExistsError:
                    pass
                old = read_lock(self.run_dir)
                if old is None:
                    continue  # Released meanwhile: try again.
                if not old:
                    raise RunDirLockedError(
                        f"run_dir {self.run_dir} has an unreadable lock file {self.path}; if no "
                        f"other trainer uses this run_dir, delete it and re-run"
                    )
                if owner_alive(old):
                    raise RunDirLockedError(
                        f"run_dir {self.run_dir} is in use by {describe(old)}; wait for it to "
                        f"finish or use another run_dir (if that process is gone, delete "
                        f"{self.path})"
                    )
                with _guard(self.run_dir):
                    if read_lock(self.run_dir) == old:  # Nobody took it over meanwhile.
                        os.unlink(self.path)
                        log.warning(
                            "run_dir %s: removed the stale lock of %s (no longer running)",
                            self.run_dir,
                            describe(old),
                        )
            raise RunDirLockedError(
                f"run_dir {self.run_dir}: could not take {self.path} "
                f"(it keeps changing); is another trainer starting there?"
            )
        finally:
            os.unlink(tmp)

    def release(self) -> None:
        """Removes the lock file if it is still this process's (idempotent)."""
        if not self.held:
            return
        self.held = False
        info = read_lock(self.run_dir)
        if info and info.get("token") == self.info["token"]:
            try:
                os.unlink(self.path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_if_owned(run_dir: str, what: str) -> None:
    """Raises RunDirLockedError if a live process owns `run_dir` (for readers of its export)."""
    owner = live_owner(run_dir)
    if owner is not None:
        who = describe(owner) if owner else "a process (unreadable lock file)"
        raise RunDirLockedError(
            f"run_dir {run_dir} is in use by {who}; {what} after it "
            f"finishes (its export/ is written at the end)"
        )


class _NoLock:
    """What processes other than 0 hold in a multi-process run."""

    def release(self) -> None:
        """Nothing to release."""


def own_run_dir(run_dir: str, store_url: str):
    """The trainer's lock on `run_dir`: checks the placement, then takes the lock.

    Single process: `RunDirLock(run_dir).acquire()`. Multi-process: process 0
    takes it and broadcasts whether it could; every process then raises (the
    others name process 0's message) or goes on, and the others create
    run_dir too (it may be host-local). Returns an object with `release()`.
    """
    check_run_dir(run_dir, store_url)
    import jax  # Here: sweep/evaluate import this module without needing JAX.

    if jax.process_count() == 1:
        return RunDirLock(run_dir).acquire()
    import numpy as np
    from jax.experimental import multihost_utils

    lock, error = _NoLock(), None
    if jax.process_index() == 0:
        try:
            lock = RunDirLock(run_dir).acquire()
        except RunDirError as e:
            error = e
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if error is not None:
        raise error
    if not ok:
        raise RunDirLockedError(
            f"run_dir {run_dir}: process 0 could not take the run's lock "
            f"(its message names the owner); stopping with it"
        )
    if jax.process_index() != 0:
        os.makedirs(run_dir, exist_ok=True)
    return lock
