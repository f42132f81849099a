"""Celery task ``ingestion.accumulate``: thin wrapper around ``accumulate_symbol``."""

from __future__ import annotations

import logging

from celery import shared_task

from tasks.deps import DustpanTask
from tasks.ingestion import AccumulateResult, accumulate_symbol
from tasks.log_context import log_context

log = logging.getLogger(__name__)
# A batch holds up to accumulation.batch_size ids; split so that a line stays far below the
# 16 KiB at which Docker's log driver cuts a line in pieces.
TRADE_IDS_PER_LINE = 100


@shared_task(name="ingestion.accumulate", bind=True, base=DustpanTask, max_retries=None)
def accumulate(self: DustpanTask, symbol: str) -> None:
    deps = self.deps
    with log_context(symbol=symbol):
        # The wake protocol (tasks.ports.Enqueue): clear the flag just before the claim, note a
        # bounce when another run holds the symbol, ask for one more run after a bounce.
        result = accumulate_symbol(
            deps.unit_of_work(),
            symbol,
            deps.config().accumulation,
            deps.now(),
            before_claim=lambda: deps.enqueue.clear_wake(symbol),
            on_busy=lambda: deps.enqueue.note_bounced(symbol),
        )
        if result.busy:
            return
        _log_result(result)
        deps.enqueue.submit(result.executions)  # committed: a lost message is found by the sweep
        if result.more_waiting or deps.enqueue.take_bounced(symbol):
            deps.enqueue.accumulate(symbol)
        deps.latencies.accumulated(result.waits)  # last: the order and the next run go out first


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
