"""Celery task ``execution.submit``: thin wrapper around ``submit_execution``."""

from __future__ import annotations

import logging
import os
import random
import uuid

from celery import shared_task

from tasks.deps import DustpanTask
from tasks.execution import SubmitOutcome, submit_execution
from tasks.log_context import log_context
from tasks.ports import BrokerageMisconfigured, RateLimited, TemporaryError

log = logging.getLogger(__name__)

# Answers that say nothing about the order: the execution stays in flight and is looked up again.
RETRY_ON = (TemporaryError, BrokerageMisconfigured)


@shared_task(name="execution.submit", bind=True, base=DustpanTask, max_retries=None)
def submit(self: DustpanTask, execution_id: str) -> str:
    deps = self.deps
    config = deps.config()
    timing = config.timing
    with log_context(execution_id=execution_id):
        try:
            result = submit_execution(
                deps.unit_of_work(),
                deps.brokerage,
                uuid.UUID(execution_id),
                config.execution,
                deps.now(),
                worker=f"{self.request.hostname}:{os.getpid()}",  # who holds the claim while it calls
                clock=deps.now,  # the outcome is stamped when the broker answered, not when the call began
            )
        except RETRY_ON as exc:
            delay = _retry_delay(self.request.retries, exc, timing.max_countdown_seconds)
            log.warning("broker answer said nothing about the order, retrying in %d s: %s", delay, exc)
            raise self.retry(exc=exc, countdown=delay) from None
        log.info("submit outcome: %s", result.outcome.value)
        deps.enqueue.submit(result.follow_ups)
        if result.submitted_wait is not None:  # committed: the order is known at the broker
            deps.latencies.submitted(result.submitted_wait)
        if result.outcome is SubmitOutcome.SYMBOL_BUSY:
            # The symbol's calls under way end within a timeout; their row is free meanwhile.
            # Backed off, so a symbol whose calls hang costs the pool few claims while it waits.
            raise self.retry(
                countdown=_busy_delay(self.request.retries, timing.max_countdown_seconds), max_retries=None
            )
        if result.outcome is SubmitOutcome.SYMBOL_COOLING:
            # The symbol's order breaker is open: come back when it lets a probe through (or
            # sooner, for the visibility timeout); the claim then tells who probes.
            raise self.retry(countdown=max(1, min(result.wait_seconds, timing.max_countdown_seconds)), max_retries=None)
        if result.outcome is SubmitOutcome.WORKING:
            raise self.retry(countdown=min(timing.poll_seconds, timing.max_countdown_seconds))
        if result.outcome is SubmitOutcome.WAITING_FOR_BALANCE:
            # Try again after the next Beat balance fetch (the sweep re-sends pending buys too).
            raise self.retry(countdown=max(1, min(timing.balances_seconds, timing.max_countdown_seconds)))
        return result.outcome.value


def _retry_delay(retries: int, exc: Exception, cap: int) -> int:
    """At once the first time, then exponential backoff with full jitter, capped; honour a
    broker's Retry-After.

    One answer that said nothing (a 5xx, a dropped connection) is usually alone: the first retry
    looks the order up at once (never a blind re-POST), so the order is not a second late; the
    symbol's order breaker counts every such answer, so a broker that keeps failing is not
    hammered. The cap keeps a countdown below the broker visibility timeout: a countdown is spent
    holding an unacknowledged message, and one held past the timeout is delivered a second time."""
    retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
    if retries == 0 and not isinstance(exc, RateLimited):  # a rate limit is never hurried
        return 0
    ceiling = min(cap, 2 ** min(retries, 6))
    return min(cap, max(retry_after or 0, random.randint(1, ceiling)))


BUSY_FIRST_WAIT_SECONDS = 0.1  # float-ok: a duration
BUSY_MAX_WAIT_SECONDS = 30


def _busy_delay(retries: int, cap: int) -> float:  # float-ok: a duration in seconds
    """A claim the symbol's call limit turned away: 0.1 to 0.2 s the first time, doubling to at
    most 30 s (capped by ``cap``), half of it jittered.

    A healthy symbol meets its limit in a burst, and its calls end in milliseconds: it is asked
    again almost at once. A symbol whose calls hang is asked less and less often: its orders
    pile up while it hangs, and each one asked again is a task and a claim of the fleet's CPU."""
    ceiling = min(cap, BUSY_MAX_WAIT_SECONDS, BUSY_FIRST_WAIT_SECONDS * 2 ** min(retries + 1, 10))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # float-ok: a duration
