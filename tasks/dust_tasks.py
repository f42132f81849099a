"""Celery tasks of the dust family (Beat, queue ``ops``): thin wrappers around the use cases.

``dust.scan`` -> ``tasks.dust.scan_dust``; ``dust.broker_cleanup`` -> ``tasks.cleanup`` and
``tasks.orphans``; ``dust.normalize`` -> ``tasks.cleanup`` and ``tasks.consolidation``. Each
run is recorded in ``job_runs``; each is safe to run twice and to be killed (its transaction
rolls back). ``dustpan scan`` runs ``scan_once``, ``dustpan cleanup`` / ``normalize`` run
``cleanup_job``, in the foreground.
"""

from __future__ import annotations

import logging
import uuid
from decimal import Decimal
from typing import Any

from celery import shared_task

from tasks.cleanup import CleanupSummary, close_small_positions
from tasks.consolidation import Consolidator, consolidate_position
from tasks.deps import Dependencies, DustpanTask, recorded
from tasks.dust import scan_dust
from tasks.orphans import retry_orphans
from tasks.ports import BrokerageError
from tasks.venues import rules_for_symbol

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
    return cleanup_job(deps, "broker_cleanup", cleanup.cleanup_execute if execute is None else execute)


@recorded("dust.normalize")
def normalize_once(deps: Dependencies, execute: bool | None = None) -> dict[str, Any]:
    cleanup = deps.config().cleanup
    return cleanup_job(deps, "normalize", cleanup.normalize_execute if execute is None else execute)


def cleanup_job(deps: Dependencies, job: str, execute: bool) -> dict[str, Any]:
    """One run of ``broker_cleanup`` (closes, then orphan retries) or ``normalize`` (closes and
    consolidations), orders enqueued after their commit; what the task and the CLI both run."""
    config = deps.config()
    cleanup = job == "broker_cleanup"
    summary = close_small_positions(
        deps.unit_of_work(),
        deps.brokerage,
        list(config.accounts),
        config.trading_policy,
        job=job,
        threshold_usd=config.cleanup.broker_cleanup_usd if cleanup else config.cleanup.normalize_usd,
        execute=execute,
        consolidate_usd=config.cleanup.consolidate_usd,
        consolidate=None if cleanup else _consolidator(deps, execute),
    )
    if cleanup:
        orphans = retry_orphans(
            deps.unit_of_work(),
            lambda account: _held_at_broker(deps, account),
            lambda symbol: rules_for_symbol(deps.unit_of_work(), symbol, config.venues),
            config.trading_policy,
            deps.now(),
        )
        summary.orphans = [line.as_json() for line in orphans.lines]
        deps.enqueue.submit(orphans.execution_ids)
    deps.enqueue.submit(uuid.UUID(line.execution_id) for line in summary.lines if line.execution_id is not None)
    result = summary.as_json()
    _log_summary(job, summary, result)
    return result


def _log_summary(job: str, summary: CleanupSummary, result: dict[str, Any]) -> None:
    log.info("%s: %s", job, {k: v for k, v in result.items() if k not in ("lines", "orphans")})
    for line in summary.lines:
        if line.action == "failed":
            log.warning("%s: %s %s %s failed: %s", job, line.account, line.symbol, line.quantity, line.reason)


def _consolidator(deps: Dependencies, execute: bool) -> Consolidator:
    config = deps.config()

    def consolidate(account: str, symbol: str, held: Decimal, price: Decimal) -> tuple[str, str, uuid.UUID | None]:
        return consolidate_position(
            deps.unit_of_work(),
            account,
            symbol,
            held,
            price,
            rules_for_symbol(deps.unit_of_work(), symbol, config.venues),
            config.trading_policy,
            config.balances,
            deps.now(),
            execute,
        )

    return consolidate


def _held_at_broker(deps: Dependencies, account: str) -> dict[str, Decimal] | None:
    try:
        return {p.symbol: p.quantity for p in deps.brokerage(account).list_positions()}
    except BrokerageError as exc:
        log.warning("%s: broker positions unreadable, orphans wait for the next run: %s", account, exc)
        return None
