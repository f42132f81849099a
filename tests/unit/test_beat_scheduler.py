"""LeaderScheduler.maybe_due: a publish that fails because Redis is away reaches the tick as the
broker's own error (which the tick turns into "stop scheduling, lead again"), never as Celery's
SchedulingError wrapper, which nothing in Beat's loop catches: Beat would exit."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import redis
from celery.beat import SchedulingError
from celery.exceptions import reraise

from workers.beat_scheduler import BROKER_AWAY, LeaderScheduler


class _DueEntry:
    name, task = "sweep-rewake", "sweep.rewake"

    def is_due(self) -> tuple[bool, float]:
        return True, 5.0


def _scheduler(error: BaseException) -> LeaderScheduler:
    scheduler = object.__new__(LeaderScheduler)  # no app, no Redis: only maybe_due is exercised

    def apply_async(entry: Any, **_: Any) -> None:
        try:
            raise error
        except Exception as exc:  # as celery.beat.Scheduler.apply_async wraps it
            reraise(
                SchedulingError,
                SchedulingError(f"Couldn't apply scheduled task {entry.name}: {exc}"),
                sys.exc_info()[2],
            )

    scheduler.apply_async = apply_async  # type: ignore[method-assign]
    return scheduler


def test_a_publish_with_redis_away_reaches_the_tick_as_the_brokers_error() -> None:
    with pytest.raises(BROKER_AWAY):
        _scheduler(redis.ConnectionError("Error 111 connecting")).maybe_due(_DueEntry())


def test_any_other_publish_error_is_logged_and_the_tick_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    assert _scheduler(ValueError("bad entry")).maybe_due(_DueEntry()) == 5.0
    assert "Message Error" in caplog.text
