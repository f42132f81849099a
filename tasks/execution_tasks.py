"""Celery task ``execution.submit``: thin wrapper around ``submit_execution``."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from tasks.execution import SubmitOutcome, submit_execution
from workers import runtime
from workers.brokerage import BrokerageMisconfigured, RateLimited, TemporaryError
from workers.celery_app import app
from workers.logging_setup import log_context

log = logging.getLogger(__name__)


@app.task(name="execution.submit", bind=True, max_retries=None)
def submit(self: Any, execution_id: str) -> str:
    with log_context(execution_id=execution_id):
        try:
            result = submit_execution(
                runtime.unit_of_work(),
                runtime.brokerage,
                uuid.UUID(execution_id),
                runtime.execution_config(),
                runtime.now(),
            )
        except (TemporaryError, BrokerageMisconfigured) as exc:
            # The outcome is unknown: the execution stays in flight and the retry looks it up first.
            delay = _retry_delay(self.request.retries, exc)
            log.warning("broker answer said nothing about the order, retrying in %d s: %s", delay, exc)
            raise self.retry(exc=exc, countdown=delay) from None
        log.info("submit outcome: %s", result.outcome.value)
        for follow_up in result.follow_ups:
            submit.delay(str(follow_up))
        if result.outcome is SubmitOutcome.WORKING:
            raise self.retry(countdown=min(runtime.settings().execution.poll_seconds, _max_countdown()))
        if result.outcome is SubmitOutcome.WAITING_FOR_BALANCE:
            # Try again after the next Beat balance fetch (the sweep re-sends pending buys too).
            wait = min(int(runtime.settings().schedule.balances_seconds), _max_countdown())
            raise self.retry(countdown=max(1, wait))
        return result.outcome.value


def _retry_delay(retries: int, exc: Exception) -> int:
    """Exponential backoff with full jitter, capped; honour a broker's Retry-After."""
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
    cap = _max_countdown()
    ceiling = min(cap, 2 ** min(retries + 1, 6))
    return min(cap, max(retry_after or 0, random.randint(1, ceiling)))


def _max_countdown() -> int:
    # A countdown is spent holding an unacknowledged message: it must stay below the
    # broker visibility timeout, or the waiting retry is delivered a second time.
    return runtime.settings().celery.max_countdown_seconds
