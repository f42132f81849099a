"""A lock that a fork of this process waits for (``os.register_at_fork``).

A fork copies every lock as it is at that instant. A thread of the process that forks Celery's
pool children (the worker sweep, a dead execution node's rescue) may hold a lock of SQLAlchemy,
redis-py or kombu in the middle of its work, and a child forked then waits on it forever. Such a
thread does its work under a ``ForkGuard``; a fork takes the guard first (at most
``wait_seconds``: the work's own calls time out before that), so it happens between two pieces
of work.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType

FORK_WAIT_SECONDS = 30.0  # float-ok: a duration


class ForkGuard:
    def __init__(self, wait_seconds: float = FORK_WAIT_SECONDS) -> None:  # float-ok: a duration
        self._lock = threading.Lock()
        self._wait_seconds = wait_seconds
        self._held_for_fork = False
        self._registered = False

    def register(self) -> None:
        """From now on every fork of this process waits for the guard (once per guard)."""
        if not self._registered:
            self._registered = True
            os.register_at_fork(
                before=self._before_fork, after_in_parent=self._after_fork, after_in_child=self._after_fork
            )

    def __enter__(self) -> ForkGuard:
        self._lock.acquire()
        return self

    def __exit__(self, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._lock.release()

    def _before_fork(self) -> None:
        self._held_for_fork = self._lock.acquire(timeout=self._wait_seconds)

    def _after_fork(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._lock.release()
