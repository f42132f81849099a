"""The broker visibility timeout bounds every delivery: time limits and countdowns derive from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from workers.settings import CelerySettings

REPO = Path(__file__).resolve().parents[2]


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


def _celeryconfig_events(**env: str) -> str:
    code = "import celeryconfig as c; print(c.worker_send_task_events, c.task_send_sent_event)"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")} | env
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_task_events_are_off_until_a_monitor_asks_unless_the_setting_turns_them_on() -> None:
    # Off: Flower's periodic enable_events broadcast turns worker events on (tests/integration/test_flower.py).
    assert _celeryconfig_events() == "False False"
    assert _celeryconfig_events(DUSTPAN_CELERY__TASK_EVENTS="true") == "True True"
