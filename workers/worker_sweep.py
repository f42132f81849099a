"""Every worker sweeps too: the database, not Beat or a message, says what is left to do.

Beat sends ``sweep.rewake`` every few seconds, but a fleet whose Beat is gone (or whose
messages were lost with a Redis restart) must still finish what is waiting. So the prefork
node of each worker runs the same sweep from a thread of its own, whenever no sweep ran
fleet-wide (Beat's or any worker's, per ``job_runs``) in the last interval; a session advisory
lock keeps two workers from sweeping at once. A failure (the database or Redis away) is one
WARNING, the return one INFO, and the loop goes on, trying every second until the sweep runs
again: so the first sweep after a dependency's return comes within about a second of it.

The thread lives in the process that forks the pool's children, and a fork copies every lock
as it is at that instant: a child forked while the sweep held SQLAlchemy's mapper-configuration
mutex (or any lock of its clients) waited on it forever, and every task it took hit its time
limit. So the mappers are configured before the thread starts, and a fork waits until the
thread is between sweeps (``workers.fork_guard``).
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
from workers.fork_guard import ForkGuard

log = logging.getLogger(__name__)
RETRY_SECONDS = 1.0
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"dustpan:worker-sweep").digest()[:8], "big", signed=True)


class WorkerSweep:
    def __init__(self, deps: Dependencies, every_seconds: Decimal) -> None:
        self._deps = deps
        self._every = float(every_seconds)  # float-ok: a duration
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="worker-sweep", daemon=True)
        self._sweeping = ForkGuard()  # held during a sweep; a fork takes it first

    def start(self) -> None:
        configure_mappers()  # once, here: a child must never inherit the configuration mutex held
        self._sweeping.register()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        # After a failure the next attempt comes within a second: the sweep after the
        # dependency's return is what finishes the work the outage left undone.
        while not self._stop.wait(min(self._every, RETRY_SECONDS) if self._failing else self._every):
            try:
                with self._sweeping:
                    self.sweep_once()
            except Exception as exc:  # the database or Redis is away: the next tick tries again
                if not self._failing:
                    log.warning("worker sweep failed (retrying every %s s): %s", min(self._every, RETRY_SECONDS), exc)
                self._failing = True
                continue
            if self._failing:
                log.info("worker sweep runs again")
            self._failing = False

    def sweep_once(self) -> bool:
        """Sweep unless one ran fleet-wide within the interval or another worker sweeps now.

        The connection that holds the advisory lock touches no table: a transaction that had
        read ``job_runs`` would hold a lock on it while the sweep's own statements (other
        connections) wait behind any DDL queued on it (a TRUNCATE, a migration's ALTER TABLE),
        a wait PostgreSQL's deadlock detector cannot see, and the whole fleet would stop."""
        deps = self._deps
        since = deps.now() - timedelta(seconds=self._every)
        with deps.unit_of_work() as uow:
            # A failed sweep (the broker was away) leads nobody to wait: the next one runs at once.
            recent = uow.session.scalar(
                select(func.max(JobRun.started_at)).where(
                    JobRun.job == "sweep.rewake", JobRun.outcome.is_distinct_from("failed")
                )
            )
        if recent is not None and recent > since:
            return False
        with deps.unit_of_work() as lock:
            if not lock.session.scalar(select(func.pg_try_advisory_lock(_LOCK_KEY))):
                return False
            try:
                rewake_once(deps)
            finally:
                lock.session.execute(select(func.pg_advisory_unlock(_LOCK_KEY)))
        return True
