"""`dustpan up` owns its children: nothing it started outlives it, and a later `up` replaces
whatever a crashed one left behind.

Three layers, because no single one covers every way `up` can end:
- Ctrl-C, SIGTERM and SIGHUP (a closed terminal) are caught and stop the children in order;
- every child asks the kernel for a death signal (Linux ``PR_SET_PDEATHSIG``), so even a
  SIGKILL of `up` stops them: no supervisor of our own would survive that SIGKILL either;
- and, should that graceful stop hang (a Celery worker told to stop while it still starts
  goes on reconnecting to the Redis that died with `up`), each child's own watchdog thread
  (:func:`watch_owner`) kills its process group once its owner has been gone for a while;
- `up` holds ``up.lock`` and records its children in ``up.json``; a later `up` that gets the
  lock knows the recorded owner is dead and stops any recorded child still running (and the
  embedded servers stop their own orphans, ``workers.embedded._supervised``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil

from workers.cli_errors import UsageError

OWNER_VARIABLE = "DUSTPAN_UP_PID"  # set by `up` in its children's environment
OWNER_GONE_GRACE_SECONDS = 20
LOCK_FILE = "up.lock"
RECORD_FILE = "up.json"
PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_SECONDS = 15


class AlreadyRunning(UsageError):
    """Another `up` (or `demo`) owns this data directory: exit 2 naming it."""


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the process that started it dies."""
    parent = os.getpid()

    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
        except (OSError, AttributeError):  # not Linux: the signal handlers and up.json remain
            return
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return arm


def watch_owner(owner_pid: int, grace_seconds: float = OWNER_GONE_GRACE_SECONDS) -> None:  # float-ok: seconds
    """In a child of `up`: once ``owner_pid`` is no longer our parent, allow the death signal's
    graceful stop ``grace_seconds``, then SIGKILL our whole process group (a worker's pool too)."""

    if os.getppid() != owner_pid:  # a grandchild that inherited the variable: its parent watches
        return

    def watch() -> None:
        while os.getppid() == owner_pid:
            time.sleep(0.5)
        time.sleep(grace_seconds)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="up-owner-watchdog", daemon=True).start()


def take_ownership(data_dir: Path) -> IO[str]:
    """The lock of ``data_dir``'s one `up` (or `demo`); raises AlreadyRunning when it is taken.

    The lock dies with its holder, however it dies, so holding it proves the recorded owner is gone.
    """
    handle = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        record = read_record(data_dir)
        handle.close()
        owner = record.get("pid", "?")
        raise AlreadyRunning(
            f"dustpan up is already running in {data_dir} (pid {owner}, API {record.get('api_url', '?')});"
            " stop it first, or use another directory"
        ) from None
    return handle


def read_record(data_dir: Path) -> dict[str, object]:
    try:
        record = json.loads((data_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def write_record(data_dir: Path, api_url: str, children: dict[str, int]) -> None:
    record = {"pid": os.getpid(), "api_url": api_url, "children": children}
    temporary = data_dir / f"{RECORD_FILE}.tmp"
    temporary.write_text(json.dumps(record))
    temporary.replace(data_dir / RECORD_FILE)


def forget_record(data_dir: Path) -> None:
    (data_dir / RECORD_FILE).unlink(missing_ok=True)


def stop_leftovers(data_dir: Path) -> list[str]:
    """Stop the children a dead `up` recorded and that still run; returns what was stopped.

    Only called with the lock held. A recorded pid is stopped only if it is still a dustpan
    command (pids are reused), with its whole session (each child leads its own).
    """
    record = read_record(data_dir)
    children = record.get("children")
    stopped = []
    for name, pid in children.items() if isinstance(children, dict) else []:
        process = _dustpan_process(pid)
        if process is not None:
            _stop_session(process)
            stopped.append(f"{name} (pid {pid})")
    forget_record(data_dir)
    return stopped


def _dustpan_process(pid: object) -> psutil.Process | None:
    try:
        process = psutil.Process(int(str(pid)))
        return process if "workers.cli" in " ".join(process.cmdline()) else None
    except (ValueError, psutil.Error):
        return None


def _stop_session(leader: psutil.Process) -> None:
    try:
        members = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return
    for process in members:
        _signal(process, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(members, timeout=STOP_TIMEOUT_SECONDS)
    for process in alive:
        _signal(process, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)


def _signal(process: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        process.send_signal(sig)


class CrashLoop:
    """A child that keeps dying right after its start is not restarted for ever: after
    ``limit`` quick deaths in a row `up` stops and shows the end of its log instead."""

    QUICK_SECONDS = 10

    def __init__(self, limit: int = 5) -> None:
        self.limit = limit
        self.quick_deaths: dict[str, int] = {}

    def note_death(self, name: str, lived_seconds: float) -> bool:  # float-ok: seconds
        """Whether the child is in a crash loop now."""
        quick = lived_seconds < self.QUICK_SECONDS
        self.quick_deaths[name] = self.quick_deaths.get(name, 0) + 1 if quick else 0
        return self.quick_deaths[name] >= self.limit


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
