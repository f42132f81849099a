"""Celery task ``sweep.rewake`` (Beat): re-send work whose message was lost (``tasks.sweeps``)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from celery import shared_task

from tasks.deps import Dependencies, DustpanTask, recorded
from tasks.execution import release_claims_of
from tasks.sweeps import find_orphaned_executions, find_stranded_work


@shared_task(name="sweep.rewake", bind=True, base=DustpanTask, ignore_result=True)
def rewake(self: DustpanTask) -> dict[str, int]:
    return rewake_once(self.deps)


@recorded("sweep.rewake")
def rewake_once(deps: Dependencies) -> dict[str, int]:
    config = deps.config()
    timing = config.timing
    work = find_stranded_work(
        deps.unit_of_work(),
        deps.now(),
        config.accumulation.threshold,
        timedelta(seconds=timing.pending_stale_seconds),
        timedelta(seconds=timing.submitted_stale_seconds),
    )
    resent = deps.enqueue.resend_stale(work.symbols, work.executions, timing.pending_stale_seconds)
    return {"symbols": len(work.symbols), "executions": len(work.executions), "resent": resent}


def release_dead_claims(deps: Dependencies, worker: str) -> int:
    """The claims of ``worker``, an execution node its keeper saw exit, let go at once."""
    return release_claims_of(deps.unit_of_work(), worker, deps.now())


def rescue_executions(deps: Dependencies, already: set[uuid.UUID], died_at: datetime | None = None) -> int:
    """Re-send the executions whose claims lapsed, and with ``died_at`` those nobody claimed
    since before then (``tasks.sweeps.find_orphaned_executions``; ``already``: the ids this
    rescue re-sent before, never sent twice by it); how many were sent."""
    per_symbol = deps.config().execution.calls_per_symbol
    found = find_orphaned_executions(deps.unit_of_work(), deps.now(), died_at, per_symbol)
    fresh = [execution_id for execution_id in found if execution_id not in already]
    already.update(fresh)
    deps.enqueue.submit(fresh)
    return len(fresh)
