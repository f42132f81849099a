"""Celery task ``ingestion.accumulate``: thin wrapper around ``accumulate_symbol``."""

from __future__ import annotations

from typing import Any

from tasks.ingestion import accumulate_symbol
from workers import runtime
from workers.celery_app import app


@app.task(name="ingestion.accumulate", bind=True, max_retries=None)
def accumulate(self: Any, symbol: str) -> None:
    runtime.clear_wake(symbol)
    result = accumulate_symbol(runtime.unit_of_work(), symbol, runtime.accumulation_config(), runtime.now())
    # Enqueue only after commit; a message lost here is found again by the sweep.
    from tasks.execution_tasks import submit

    for execution_id in result.executions:
        submit.delay(str(execution_id))
    if result.more_waiting:
        accumulate.delay(symbol)
