"""Every worker sweeps too: the database, not Beat or a message, says what is left to do.

Beat sends ``sweep.rewake`` every few seconds, but a fleet whose Beat is gone (or whose
messages were lost with a Redis restart) must still finish what is waiting. So the prefork
node of each worker runs the same sweep from a thread of its own, whenever no sweep ran
fleet-wide (Beat's or any worker's, per ``job_runs``) in the last interval; a session advisory
lock keeps two workers from sweeping at once. A failure (the database or Redis away) is one
WARNING, the return one INFO, and the loop goes on.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import configure_mappers

from models.tables_ops import JobRun
from tasks.deps import Dependencies
from tasks.sweep_tasks import rewake_once

log = logging.getLogger(__name__)
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"dustpan:worker-sweep").digest()[:8], "big", signed=True)


class WorkerSweep:
    def __init__(self, deps: Dependencies, every_seconds: Decimal) -> None:
        self._deps = deps
        self._every = float(every_seconds)  # float-ok: a duration
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="worker-sweep", daemon=True)

    def start(self) -> None:
        # The prefork pool forks its children from this process, at start and whenever it
        # replaces one. A child forked while this thread configures the ORM mappers (lazily, at
        # the first query) inherits SQLAlchemy's configure mutex held and hangs at its own first
        # query until the task's time limit: configure them here, before any thread runs.
        configure_mappers()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.sweep_once()
            except Exception as exc:  # the database or Redis is away: the next tick tries again
                if not self._failing:
                    log.warning("worker sweep failed (retrying every %s s): %s", self._every, exc)
                self._failing = True
                continue
            if self._failing:
                log.info("worker sweep runs again")
            self._failing = False

    def sweep_once(self) -> bool:
        """Sweep unless one ran fleet-wide within the interval or another worker sweeps now."""
        deps = self._deps
        with deps.unit_of_work() as uow:
            session = uow.session
            since = deps.now() - timedelta(seconds=self._every)
            recent = session.scalar(select(func.max(JobRun.started_at)).where(JobRun.job == "sweep.rewake"))
            if recent is not None and recent > since:
                return False
            if not session.scalar(select(func.pg_try_advisory_lock(_LOCK_KEY))):
                return False
            try:
                rewake_once(deps)
            finally:
                session.execute(select(func.pg_advisory_unlock(_LOCK_KEY)))
        return True
