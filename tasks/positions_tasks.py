"""Celery task ``positions.sync`` (Beat, queue ``ops``): thin wrapper around ``sync_positions``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from tasks.deps import Dependencies, DustpanTask, recorded
from tasks.lots import sync_positions


@shared_task(name="positions.sync", bind=True, base=DustpanTask, ignore_result=True)
def sync(self: DustpanTask) -> dict[str, Any]:
    return sync_once(self.deps)


@recorded("positions.sync")
def sync_once(deps: Dependencies) -> dict[str, Any]:
    accounts = deps.config().accounts
    return sync_positions(deps.unit_of_work(), deps.brokerage, accounts, deps.now()).as_json()
