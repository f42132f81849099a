"""Celery task ``balances.fetch`` (Beat): thin wrapper around ``fetch_balances``."""

from __future__ import annotations

import logging
from typing import Any

from tasks.balances import fetch_balances
from tasks.job_runs import recorded
from workers import runtime
from workers.celery_app import app

log = logging.getLogger(__name__)


@app.task(name="balances.fetch", ignore_result=True)
@recorded("balances.fetch")
def fetch() -> dict[str, Any]:
    """Every configured account; the retries happen inside (tenacity, seconds), not as Celery retries."""
    results = fetch_balances(
        runtime.unit_of_work(),
        runtime.brokerage,
        list(runtime.settings().accounts),
        runtime.balance_config(),
        runtime.now(),
    )
    failed = {r.account: r.error for r in results if not r.ok}
    for account, error in failed.items():
        log.warning("balance of %s not fetched (last known kept): %s", account, error)
    log.info("balances fetched: %d ok, %d failed", len(results) - len(failed), len(failed))
    return {"ok": len(results) - len(failed), "failed": failed, "attempts": {r.account: r.attempts for r in results}}
