"""Celery tasks of the audit (Beat, queue ``ops``): the check and the background verifier's steps.

The use cases live in ``tasks.audit`` and ``tasks.audit_verifier``, which import no Celery: a
one-shot `dustpan audit` loads neither the Celery app nor its tasks.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import shared_task

from tasks.audit import audit_books
from tasks.audit_verifier import verify_step
from tasks.deps import Dependencies, DustpanTask, recorded
from tasks.totals import fold_deltas

log = logging.getLogger("tasks.audit")


@shared_task(name="audit.check", bind=True, base=DustpanTask, ignore_result=True)
def check(self: DustpanTask) -> dict[str, Any]:
    return check_once(self.deps)


@shared_task(name="audit.verify", bind=True, base=DustpanTask, ignore_result=True)
def verify(self: DustpanTask) -> dict[str, Any]:
    """One bounded chunk of the background re-verification (ops queue, like every audit task)."""
    return verify_once(self.deps)


@recorded("audit.check")
def check_once(deps: Dependencies) -> dict[str, Any]:
    _fold(deps)
    config = deps.config()
    report = audit_books(
        deps.unit_of_work(), config.accumulation.threshold, deps.now(), config.audit.max_waiting_seconds
    )
    for symbol in report.symbols:
        if not symbol.balanced:
            log.error("audit imbalance on %s: %s", symbol.symbol, "; ".join(symbol.problems))
    for execution_id in report.unbalanced_sales:
        log.error("audit imbalance: sale %s requested != proceeds + dust + unfilled", execution_id)
    unbalanced = [s.symbol for s in report.symbols if not s.balanced]
    return {"ok": report.ok, "symbols": len(report.symbols), "unbalanced": unbalanced}


@recorded("audit.verify")
def verify_once(deps: Dependencies) -> dict[str, Any]:
    _fold(deps)
    audit = deps.config().audit
    step = verify_step(
        deps.unit_of_work(),
        deps.now(),
        audit.verify_chunk_rows,
        timedelta(seconds=audit.verify_period_seconds),
        timedelta(seconds=audit.verify_every_seconds),
    )
    return {"outcome": step.outcome, "trades": step.trades, "executions": step.executions}


def _fold(deps: Dependencies) -> None:
    with deps.unit_of_work() as uow:
        fold_deltas(uow.session)  # keeps the pending deltas few, whoever reads them next
        uow.commit()
