"""Celery task ``venues.sync`` (Beat, queue ``ops``): thin wrapper around ``sync_venue_rules``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from tasks.deps import Dependencies, DustpanTask, recorded
from tasks.venues import sync_venue_rules


@shared_task(name="venues.sync", bind=True, base=DustpanTask, ignore_result=True)
def sync(self: DustpanTask) -> dict[str, Any]:
    return sync_once(self.deps)


@recorded("venues.sync")
def sync_once(deps: Dependencies) -> dict[str, Any]:
    config = deps.config()
    brokerage = deps.brokerage(config.market_data_account)
    return sync_venue_rules(deps.unit_of_work(), brokerage, config.venues, deps.now()).as_json()
