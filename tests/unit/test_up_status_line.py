"""The status line of `dustpan up`, as the operator reads it (workers/up_status.py)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from workers.up_status import StackStatus, duration_text


def status(accumulated: timedelta | None, ordered: timedelta | None) -> StackStatus:
    return StackStatus(
        queues={"ingestion": 3, "execution": 0, "ops": 1},
        trades_per_second=Decimal("412.5"),
        executions={"pending": 2, "submitted": 1, "filled": 40},
        imbalances=0,
        restarts=1,
        accumulated_p99=accumulated,
        ordered_p99=ordered,
    )


def test_status_line_shows_the_last_minutes_p99_between_the_rate_and_the_executions() -> None:
    line = status(timedelta(milliseconds=42, microseconds=400), timedelta(seconds=37, milliseconds=160)).line()
    assert line == (
        "queue ingestion 3 execution 0 ops 1 | trades/s 412.5 | p99 1m accumulated 42 ms, ordered 37.2 s"
        " | executions pending 2 submitted 1 filled 40 | imbalances 0 | restarts 1"
    )


def test_status_line_says_dash_for_a_minute_without_trades() -> None:
    assert "| p99 1m accumulated -, ordered - |" in status(None, None).line()


@pytest.mark.parametrize(
    ("wait", "shown"),
    [
        (timedelta(0), "0 ms"),
        (timedelta(microseconds=400), "0 ms"),
        (timedelta(microseconds=1600), "2 ms"),
        (timedelta(milliseconds=9999), "9999 ms"),
        (timedelta(seconds=10), "10.0 s"),
        (timedelta(seconds=-1), "0 ms"),  # the worker's clock behind the database's
    ],
)
def test_durations_read_in_milliseconds_below_ten_seconds(wait: timedelta, shown: str) -> None:
    assert duration_text(wait) == shown
