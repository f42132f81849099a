"""Celery task ``audit.check`` (Beat): thin wrapper around ``audit_books``."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from tasks.audit import audit_books
from tasks.deps import Dependencies, DustpanTask, recorded

log = logging.getLogger(__name__)


@shared_task(name="audit.check", bind=True, base=DustpanTask, ignore_result=True)
def check(self: DustpanTask) -> dict[str, Any]:
    return check_once(self.deps)


@recorded("audit.check")
def check_once(deps: Dependencies) -> dict[str, Any]:
    report = audit_books(deps.unit_of_work(), deps.config().accumulation.threshold, deps.now())
    for symbol in report.symbols:
        if not symbol.balanced:
            log.error("audit imbalance on %s: %s", symbol.symbol, "; ".join(symbol.problems))
    for execution_id in report.unbalanced_sales:
        log.error("audit imbalance: sale %s requested != proceeds + dust + unfilled", execution_id)
    return {
        "ok": report.ok,
        "symbols": len(report.symbols),
        "unbalanced": [s.symbol for s in report.symbols if not s.balanced],
    }
