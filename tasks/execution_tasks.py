"""Celery task ``execution.submit``: thin wrapper around ``submit_execution``."""

from __future__ import annotations

import logging
import os
import random
import uuid

from celery import shared_task

from tasks.deps import DustpanTask
from tasks.execution import SubmitOutcome, claimant, submit_execution
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
                worker=claimant(self.request.hostname, os.getpid()),  # who holds the claim while it calls
                clock=deps.now,  # the outcome is stamped when the broker answered, not when the call began
                # A call slot of the symbol freed: the executions turned away meanwhile go now.
                wake=deps.enqueue.submit,
            )
        except RETRY_ON as exc:
            delay = _retry_delay(self.request.retries, exc, timing.max_countdown_seconds)
            log.warning("broker answer said nothing about the order, retrying in %d s: %s", delay, exc)
            raise self.retry(exc=exc, countdown=delay) from None
        log.info("submit outcome: %s", result.outcome.value)
        deps.enqueue.submit(result.follow_ups)
        if result.submitted_wait is not None:  # committed: the order is known at the broker
            deps.latencies.submitted(result.submitted_wait)
        # SYMBOL_BUSY is not retried: the symbol's calls under way wake the execution when one
        # of them ends (tasks.execution._waiting), so a symbol whose calls hang costs the pool
        # one task per order instead of a retry every few hundred milliseconds.
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
