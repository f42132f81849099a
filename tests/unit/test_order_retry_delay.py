"""How long execution.submit waits before it asks again (tasks.execution_tasks)."""

from __future__ import annotations

from tasks.execution_tasks import _retry_delay
from tasks.ports import RateLimited, TemporaryError


def test_an_answer_that_said_nothing_is_looked_up_at_once_then_backed_off_with_jitter() -> None:
    error = TemporaryError("HTTP 500")
    assert _retry_delay(0, error, cap=60) == 0
    delays = {retries: {_retry_delay(retries, error, cap=60) for _ in range(300)} for retries in range(1, 8)}
    assert delays[1] == {1, 2}
    assert max(delays[3]) == 8 and min(delays[3]) == 1
    assert max(delays[7]) <= 60 and max(delays[7]) > 8
    assert max(_retry_delay(9, error, cap=3) for _ in range(100)) <= 3


def test_a_rate_limit_is_never_retried_at_once() -> None:
    limited = RateLimited("HTTP 429", retry_after=7)
    assert _retry_delay(0, limited, cap=60) == 7
    assert _retry_delay(0, RateLimited("HTTP 429", retry_after=90), cap=60) == 60
    assert {_retry_delay(0, RateLimited("HTTP 429"), cap=60) for _ in range(100)} == {1}
