"""Celery tasks of the dust family (Beat, queue ``ops``): thin wrappers around the use cases.

``venues.sync`` -> ``tasks.venues.sync_venue_rules``, ``positions.sync`` ->
``tasks.lots.sync_positions``, ``dust.scan`` -> ``tasks.dust.scan_dust``. Each run is recorded
in ``job_runs``; each is safe to run twice and to be killed (its transaction rolls back).
"""

from __future__ import annotations

import logging
from typing import Any

from tasks.dust import scan_dust
from tasks.job_runs import recorded
from tasks.lots import sync_positions
from tasks.venues import sync_venue_rules
from workers import runtime
from workers.celery_app import app

log = logging.getLogger(__name__)


def _market_data_account() -> str:
    # Asset data and prices are the same for every account: the first configured one asks.
    return next(iter(runtime.settings().accounts))


@recorded("venues.sync")
def sync_venues_once() -> dict[str, Any]:
    brokerage = runtime.brokerage(_market_data_account())
    report = sync_venue_rules(runtime.unit_of_work(), brokerage, runtime.venue_config(), runtime.now())
    return report.as_json()


@recorded("positions.sync")
def sync_positions_once() -> dict[str, Any]:
    accounts = runtime.settings().accounts
    return sync_positions(runtime.unit_of_work(), runtime.brokerage, accounts, runtime.now()).as_json()


@recorded("dust.scan")
def scan_once(execute: bool) -> dict[str, Any]:
    brokerage = runtime.brokerage(_market_data_account())
    report = scan_dust(
        runtime.unit_of_work(), brokerage.latest_price, runtime.dust_scan_config(), runtime.now(), execute=execute
    )
    for execution_id in report.execution_ids:  # committed: the sweep re-sends any lost message
        runtime.submit_after_commit(execution_id)
    return report.as_json()


@app.task(name="venues.sync", ignore_result=True)
def sync_venues() -> dict[str, Any]:
    return sync_venues_once()


@app.task(name="positions.sync", ignore_result=True)
def sync_positions_task() -> dict[str, Any]:
    return sync_positions_once()


@app.task(name="dust.scan", ignore_result=True)
def scan(execute: bool = True) -> dict[str, Any]:
    """Beat runs the scan for real (SPEC 1.3); ``dustpan scan`` is the dry-run-by-default one."""
    return scan_once(execute)
