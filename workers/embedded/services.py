"""Both embedded servers as one context manager, in start and shutdown order."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from workers.embedded.postgres import EmbeddedPostgres
from workers.embedded.redis import EmbeddedRedis


class EmbeddedServices:
    """Both servers under one data directory; a context manager that starts and stops them.

    Inside ``with``, SIGTERM (unless someone already handles it) exits like Ctrl-C does, so
    ``__exit__`` runs instead of the process vanishing and leaving the servers orphaned.
    """

    def __init__(self, data_dir: Path, *, fsync: bool = True, persist: bool = True) -> None:
        self.postgres = EmbeddedPostgres(data_dir, fsync=fsync)
        self.redis = EmbeddedRedis(data_dir, persist=persist)
        self._previous_sigterm: Any = None

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def broker_url(self) -> str:
        return self.redis.url

    def start(self) -> None:
        self.postgres.start()
        try:
            self.redis.start()
        except BaseException:
            self.postgres.stop()
            raise

    def stop(self) -> None:
        # The broker first, so that nothing new is queued while the database goes down.
        try:
            self.redis.stop()
        finally:
            self.postgres.stop()

    def __enter__(self) -> EmbeddedServices:
        self._previous_sigterm = _exit_on_sigterm()
        try:
            self.start()
        except BaseException:
            self._restore_sigterm()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop()
        finally:
            self._restore_sigterm()

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None


def _exit_on_sigterm() -> Any:
    """Turn SIGTERM into SystemExit if nobody handles it yet; returns the handler replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)
