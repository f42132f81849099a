"""Celery tasks of the dust family (Beat, queue ``ops``): thin wrappers around the use cases.

``dust.scan`` -> ``tasks.dust.scan_dust``; ``dust.broker_cleanup`` and ``dust.normalize`` ->
``tasks.cleanup.close_small_positions``. Each run is recorded in ``job_runs``; each is safe to
run twice and to be killed (its transaction rolls back). The ``*_once`` functions are what
``dustpan scan`` / ``cleanup`` / ``normalize`` run in the foreground.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from celery import shared_task

from tasks.cleanup import close_small_positions
from tasks.deps import Dependencies, DustpanTask, recorded
from tasks.dust import scan_dust

log = logging.getLogger(__name__)


@shared_task(name="dust.scan", bind=True, base=DustpanTask, ignore_result=True)
def scan(self: DustpanTask, execute: bool = True) -> dict[str, Any]:
    """Beat runs the scan for real (SPEC 1.3); ``dustpan scan`` is the dry-run-by-default one."""
    return scan_once(self.deps, execute)


@shared_task(name="dust.broker_cleanup", bind=True, base=DustpanTask)
def broker_cleanup(self: DustpanTask, execute: bool | None = None) -> dict[str, Any]:
    return broker_cleanup_once(self.deps, execute)


@shared_task(name="dust.normalize", bind=True, base=DustpanTask)
def normalize(self: DustpanTask, execute: bool | None = None) -> dict[str, Any]:
    return normalize_once(self.deps, execute)


@recorded("dust.scan")
def scan_once(deps: Dependencies, execute: bool) -> dict[str, Any]:
    config = deps.config()
    brokerage = deps.brokerage(config.market_data_account)
    report = scan_dust(deps.unit_of_work(), brokerage.latest_price, config.dust_scan, deps.now(), execute=execute)
    deps.enqueue.submit(report.execution_ids)  # committed: the sweep re-sends any lost message
    return report.as_json()


@recorded("dust.broker_cleanup")
def broker_cleanup_once(deps: Dependencies, execute: bool | None = None) -> dict[str, Any]:
    cleanup = deps.config().cleanup
    chosen = cleanup.cleanup_execute if execute is None else execute
    return _close_small(deps, "broker_cleanup", cleanup.broker_cleanup_usd, chosen)


@recorded("dust.normalize")
def normalize_once(deps: Dependencies, execute: bool | None = None) -> dict[str, Any]:
    cleanup = deps.config().cleanup
    chosen = cleanup.normalize_execute if execute is None else execute
    return _close_small(deps, "normalize", cleanup.normalize_usd, chosen)


def _close_small(deps: Dependencies, job: str, threshold: Decimal, execute: bool) -> dict[str, Any]:
    config = deps.config()
    summary = close_small_positions(
        deps.unit_of_work(),
        deps.brokerage,
        list(config.accounts),
        config.trading_policy,
        job=job,
        threshold_usd=threshold,
        execute=execute,
    )
    result = summary.as_json()
    log.info("%s: %s", job, {k: v for k, v in result.items() if k != "lines"})
    return result
