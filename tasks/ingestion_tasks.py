"""Celery task ``ingestion.accumulate``: thin wrapper around ``accumulate_symbol``."""

from __future__ import annotations

import logging
from typing import Any

from tasks.ingestion import AccumulateResult, accumulate_symbol
from workers import runtime
from workers.celery_app import app
from workers.logging_setup import log_context

log = logging.getLogger(__name__)
# A batch holds up to accumulation.batch_size ids; split so that a line stays far below the
# 16 KiB at which Docker's log driver cuts a line in pieces.
TRADE_IDS_PER_LINE = 100


@app.task(name="ingestion.accumulate", bind=True, max_retries=None)
def accumulate(self: Any, symbol: str) -> None:
    with log_context(symbol=symbol):
        # The wake flag is cleared just before the claim: a trade committed after it raises the
        # flag again, and its webhook enqueues a run. A run that finds another one under way
        # leaves the flag raised and notes that it bounced; the one under way, once committed,
        # takes that note and asks for a next run. Without a bounce nothing is asked for: the
        # run the webhook enqueued is still to come.
        result = accumulate_symbol(
            runtime.unit_of_work(),
            symbol,
            runtime.accumulation_config(),
            runtime.now(),
            before_claim=lambda: runtime.clear_wake(symbol),
            on_busy=lambda: runtime.note_bounced(symbol),
        )
        if result.busy:
            return
        _log_result(result)
        # Enqueue only after commit; a message lost here is found again by the sweep.
        from tasks.execution_tasks import submit

        for execution_id in result.executions:
            submit.delay(str(execution_id))
        if result.more_waiting or runtime.take_bounced(symbol):
            runtime.enqueue_accumulate(symbol)


def _log_result(result: AccumulateResult) -> None:
    """Which trades went where, searchable by trade id (`GET /trades/{id}` has the rest)."""
    level, what = (
        (logging.WARNING, "rejected (restricted symbol)") if result.rejected else (logging.INFO, "accumulated")
    )
    ids = result.trade_ids
    for start in range(0, len(ids), TRADE_IDS_PER_LINE):
        chunk = ids[start : start + TRADE_IDS_PER_LINE]
        log.log(level, "%s %d trades", what, len(chunk), extra={"trade_ids": chunk})
    for execution_id in result.executions:
        log.info("execution %s created", execution_id, extra={"execution_id": str(execution_id)})
