"""RedBeat, made to ride out a Redis outage instead of exiting (celery-redbeat 2.4).

RedBeat renews its leader lock at every tick; when Redis is away (or still loading its AOF)
the renewal raises, ``close()`` raises again, and Beat exits with status 1. A fleet whose Beat
is run by a plain process manager then has no Beat until someone notices.

``LeaderScheduler`` turns any Redis error (connection lost, timeout, ``LOADING``, a lock no
longer ours) into a state: it logs one WARNING, stops scheduling at once (it can no longer
confirm that it leads, and at most one Beat may send the schedule), and tries again with capped
jittered backoff. Coming back it first renews its own lock (the key survived, so nobody else
took it); failing that it blocks on the lock as RedBeat does at start, for at most one loop
interval, and another Beat may lead meanwhile. Leading again is one INFO line. Only a signal
(SIGTERM, SIGINT) or a bad setting ends the process; ``close()`` never raises for Redis.

Beat itself touches no PostgreSQL: the jobs it sends do, on the workers.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import kombu.exceptions
import redis
from celery.signals import beat_init
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, acquire_distributed_beat_lock, get_redis

log = logging.getLogger("celery.beat")

# Redis is away, loading, or no longer has our lock: none of these is a reason to exit.
REDIS_AWAY = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.LockError, OSError)
# Publishing a due task through kombu fails with these while the broker is away.
BROKER_AWAY = (*REDIS_AWAY, kombu.exceptions.OperationalError)
FIRST_BACKOFF_SECONDS = 0.5


class LeaderScheduler(RedBeatScheduler):
    lock: Any = None  # redis-py's Lock while this Beat leads (RedBeat's attribute)
    _away_since: float | None = None  # monotonic time this Beat stopped scheduling, None while it leads
    _failures = 0
    _errors: tuple[str, ...] = ()  # the kinds of error met during this outage, for the INFO line
    _schedule_pending = False  # the static schedule could not be written to Redis at start

    def setup_schedule(self) -> None:
        # Runs while celery builds the scheduler: never block or raise here for Redis, or
        # a SIGTERM handler asking for the scheduler would build (and wait in) a second one.
        try:
            super().setup_schedule()
        except REDIS_AWAY as exc:
            self._note_away(exc, "could not load the schedule into Redis")
            self._schedule_pending = True

    def tick(self, min: Any = min, **kwargs: Any) -> float:
        following = self._away_since is not None or self.lock is None or self._schedule_pending
        if following and not self._lead_again():
            return self._backoff()
        try:
            return float(super().tick(min=min, **kwargs))  # float-ok: seconds to the next tick
        except BROKER_AWAY as exc:
            self._note_away(exc, "lost the Redis leader lock or Redis is away")
            return self._backoff()

    def maybe_due(self, entry: Any, **kwargs: Any) -> Any:
        """RedBeat's, minus its catch-all: a broker error ends this tick (one WARNING, not a
        traceback per entry); any other error is logged as RedBeat does and the tick goes on."""
        is_due, next_time_to_run = entry.is_due()
        if is_due:
            log.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
            try:
                self.apply_async(entry, **kwargs)
            except BROKER_AWAY:
                raise
            except Exception as exc:
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, BROKER_AWAY):
                    # celery wraps a publish failure in SchedulingError: hand the tick the
                    # broker's own error, which it handles (stop scheduling, lead again)
                    raise cause from None
                log.exception("Scheduler: Message Error: %s", exc)
        return next_time_to_run

    def close(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            try:
                if lock.owned():
                    lock.release()
                    log.info("beat: Released lock")
            except REDIS_AWAY as exc:  # it expires by itself within redbeat_lock_timeout
                log.warning("beat: leader lock not released (Redis away; it expires by itself): %s", exc)
        try:
            super().close()
        except BROKER_AWAY as exc:
            log.warning("beat: closing with Redis away: %s", exc)

    def _lead_again(self) -> bool:
        """True once this Beat holds the leader lock again (and its schedule is in Redis)."""
        try:
            if self.lock is not None:
                try:
                    self.lock.extend(int(self.lock_timeout))  # still ours: nobody led meanwhile
                except redis.exceptions.LockNotOwnedError:
                    self.lock = None  # expired or taken: wait for it like a starting Beat
            if self.lock is None and not self._acquire():
                return False
            if self._schedule_pending:
                super().setup_schedule()
                self._schedule_pending = False
        except REDIS_AWAY as exc:
            self._note_away(exc, "lost the Redis leader lock or Redis is away")
            return False
        self._note_back()
        return True

    def _acquire(self) -> bool:
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=min(1.0, self.max_interval))
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)  # as RedBeat: extend *to* the timeout
        if not lock.acquire(blocking=True, blocking_timeout=self.max_interval):
            return False  # another Beat leads; a standby keeps waiting
        self.lock = lock
        return True

    def _note_away(self, exc: BaseException, what: str) -> float:
        if self._failures == 0:
            log.warning("beat: %s; stopped scheduling, re-acquiring the lock with backoff: %s", what, _short(exc))
        self._failures += 1
        if type(exc).__name__ not in self._errors:
            self._errors = (*self._errors, type(exc).__name__)
        self._away_since = self._away_since or time.monotonic()
        return self._delay()

    def _note_back(self) -> None:
        if self._failures:
            away = time.monotonic() - (self._away_since or time.monotonic())
            errors = ", ".join(self._errors)
            log.info("beat: leads again (holds the Redis leader lock) after %.1f s away (%s)", away, errors)
        else:
            log.info("beat: Acquired lock")
        self._away_since, self._failures, self._errors = None, 0, ()

    def _backoff(self) -> float:
        # Returned to celery's Service loop, which sleeps it; a SIGTERM ends the sleep.
        self._away_since = self._away_since or time.monotonic()
        return self._delay()

    def _delay(self) -> float:
        ceiling = min(float(self.max_interval), FIRST_BACKOFF_SECONDS * 2 ** min(self._failures, 8))  # float-ok: s
        return random.uniform(ceiling / 2, ceiling)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _acquire_at_start(sender: Any = None, **kwargs: Any) -> None:
    """RedBeat's blocking acquire at start, minus the traceback when Redis is away: the first
    tick then re-acquires with backoff, as after any outage."""
    scheduler = sender.scheduler
    if not isinstance(scheduler, LeaderScheduler):
        acquire_distributed_beat_lock(sender, **kwargs)
        return
    try:
        acquire_distributed_beat_lock(sender, **kwargs)
    except REDIS_AWAY as exc:
        scheduler.lock = None
        scheduler._note_away(exc, "could not take the leader lock at start")


beat_init.disconnect(acquire_distributed_beat_lock)
beat_init.connect(_acquire_at_start, weak=False)
