"""Thin Celery tasks of the audit: the Beat check and the background verifier's steps.

The use cases live in tasks.audit and tasks.audit_verifier, which import no Celery: a one-shot
`dustpan audit` loads neither the Celery app nor its tasks.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from tasks.audit import audit_books
from tasks.audit_verifier import verify_step
from tasks.job_runs import recorded
from tasks.totals import fold_deltas
from workers.celery_app import app

log = logging.getLogger("tasks.audit")


def _fold() -> None:
    from workers import runtime

    with runtime.unit_of_work() as uow:
        fold_deltas(uow.session)  # keeps the pending deltas few, whoever reads them next
        uow.commit()


@app.task(name="audit.check", ignore_result=True)
@recorded("audit.check")
def check() -> dict[str, Any]:
    from workers import runtime

    _fold()
    settings = runtime.settings()
    report = audit_books(
        runtime.unit_of_work(), settings.accumulation.threshold, runtime.now(), settings.audit.max_waiting_seconds
    )
    for symbol in report.symbols:
        if not symbol.balanced:
            log.error("audit imbalance on %s: %s", symbol.symbol, "; ".join(symbol.problems))
    return {
        "ok": report.ok,
        "symbols": len(report.symbols),
        "unbalanced": [s.symbol for s in report.symbols if not s.balanced],
    }


@app.task(name="audit.verify", ignore_result=True)
@recorded("audit.verify")
def verify() -> dict[str, Any]:
    """One bounded chunk of the background re-verification (ops queue, like every audit task)."""
    from workers import runtime

    _fold()
    settings = runtime.settings()
    step = verify_step(
        runtime.unit_of_work(),
        runtime.now(),
        settings.audit.verify_chunk_rows,
        timedelta(seconds=settings.audit.verify_period_seconds),
        timedelta(seconds=float(settings.schedule.audit_verify_seconds)),  # float-ok: a duration
    )
    return {"outcome": step.outcome, "trades": step.trades, "executions": step.executions}
