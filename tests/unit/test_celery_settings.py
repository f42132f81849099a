"""The broker visibility timeout bounds every delivery: time limits and countdowns derive from it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.settings import CelerySettings


@given(st.integers(20, 3600), st.integers(1, 60))
def test_a_delivery_always_ends_before_its_message_is_restored(visibility: int, interval: int) -> None:
    celery = CelerySettings(visibility_timeout_seconds=visibility, restore_interval_seconds=interval)
    # The longest a live worker holds a message: the longest countdown, then the hard limit.
    assert celery.max_countdown_seconds + celery.hard_time_limit_seconds < visibility
    assert 0 < celery.soft_time_limit_seconds < celery.hard_time_limit_seconds
    assert celery.max_countdown_seconds >= 1


def test_the_default_gives_a_dead_workers_messages_back_within_about_a_minute() -> None:
    celery = CelerySettings()
    assert celery.visibility_timeout_seconds + celery.restore_interval_seconds <= 61
    assert celery.max_countdown_seconds >= 10  # room for the execution retry backoff
