"""Counter increments a task makes, added up in its process and written to Redis by one thread.

A task's metrics (its success, its trades' latencies, its order's) were a Redis round trip or
two on the task's own path, every task. Here ``add`` only adds to a dict under a lock; a thread
of the process writes what was added every ``every_seconds`` in one pipeline, whatever the
number of tasks. The fleet's counters lag by at most that much. What a process had not written
when it is SIGKILLed is lost (a half second of observations); a process that exits normally
writes it first (``flush`` from Celery's shutdown signals and ``atexit``). A write that fails
(Redis away) is one WARNING and is dropped: a metric never fails or delays a task.

A forked child (Celery's prefork pool) starts with nothing added and a thread of its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

import redis

log = logging.getLogger(__name__)
FLUSH_EVERY_SECONDS = 0.5  # float-ok: a duration


class IncrementBatch:
    def __init__(
        self, client: Callable[[], redis.Redis], every_seconds: float = FLUSH_EVERY_SECONDS
    ) -> None:  # float-ok
        self._client, self._every = client, every_seconds
        self._lock = threading.Lock()
        self._added: dict[str, Counter[str]] = {}
        self._pid: int | None = None
        atexit.register(self.flush)

    def add(self, key: str, counts: Mapping[str, int]) -> None:
        """HINCRBY ``key`` by ``counts`` (field -> increment), soon."""
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (or a forked child's)
                self._added, self._pid = {}, os.getpid()
                threading.Thread(target=self._loop, name="metric-batch", daemon=True).start()
            self._added.setdefault(key, Counter()).update(counts)

    def flush(self) -> None:
        """Write what was added (one pipeline); a failure drops it with one WARNING."""
        with self._lock:
            if self._pid != os.getpid():
                return  # a forked child holds its parent's additions: the parent writes them
            added, self._added = self._added, {}
        if not added:
            return
        try:
            pipe = self._client().pipeline(transaction=False)
            for key, counts in added.items():
                for field, n in counts.items():
                    pipe.hincrby(key, field, n)
            pipe.execute()
        except Exception as exc:  # redis raises several families; none may reach a task
            log.warning("metrics not recorded (%s): %s", ", ".join(sorted(added)), exc)

    def _loop(self) -> None:
        pid = os.getpid()
        while os.getpid() == pid:
            time.sleep(self._every)
            self.flush()
