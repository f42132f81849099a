"""Celery task ``balances.fetch`` (Beat): thin wrapper around ``fetch_balances``."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from tasks.balances import fetch_balances
from tasks.deps import Dependencies, DustpanTask, recorded

log = logging.getLogger(__name__)


@shared_task(name="balances.fetch", bind=True, base=DustpanTask, ignore_result=True)
def fetch(self: DustpanTask) -> dict[str, Any]:
    return fetch_once(self.deps)


@recorded("balances.fetch")
def fetch_once(deps: Dependencies) -> dict[str, Any]:
    """Every configured account; the retries happen inside (tenacity, seconds), not as Celery retries."""
    config = deps.config()
    results = fetch_balances(deps.unit_of_work(), deps.brokerage, list(config.accounts), config.balances, deps.now())
    failed = {r.account: r.error for r in results if not r.ok}
    for account, error in failed.items():
        log.warning("balance of %s not fetched (last known kept): %s", account, error)
    log.info("balances fetched: %d ok, %d failed", len(results) - len(failed), len(failed))
    return {"ok": len(results) - len(failed), "failed": failed, "attempts": {r.account: r.attempts for r in results}}
