"""What every Celery task reaches its world through: one ``Dependencies`` object, built once per
process by the composition root (``workers.runtime.dependencies``) and set on the Celery app
(``workers.celery_app``). Tasks read it as ``self.deps`` (base class ``DustpanTask``) and never
reach up into the workers package; tests build the same object with fakes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from models.db import UnitOfWork
from tasks.balances import BalanceConfig
from tasks.dust import DustScanConfig
from tasks.execution import ExecutionConfig
from tasks.guards import TradingPolicy
from tasks.ingestion import AccumulationConfig
from tasks.job_runs import finish_run, start_run
from tasks.outages import dependency_away, first_line, outage_retry_delay
from tasks.ports import Brokerage, Enqueue, Latencies, NoLatencies
from tasks.prices import PriceConfig
from tasks.venues import VenueConfig


@dataclass(frozen=True)
class Timing:
    """Seconds the task wrappers schedule by."""

    poll_seconds: int  # re-check of an order still working at the broker
    balances_seconds: int  # Beat's balance fetch interval: a buy waiting for a balance retries after it
    max_countdown_seconds: int  # a retry countdown must stay below the broker's visibility timeout
    pending_stale_seconds: int
    submitted_stale_seconds: int


@dataclass(frozen=True)
class CleanupConfig:
    broker_cleanup_usd: Decimal
    normalize_usd: Decimal
    cleanup_execute: bool
    normalize_execute: bool
    consolidate_usd: Decimal  # normalization tops up positions below this (0 disables)


@dataclass(frozen=True)
class AuditConfig:
    max_waiting_seconds: int  # the audit is not ok while a trade waits longer
    verify_period_seconds: int  # every row is re-verified within this
    verify_chunk_rows: int  # least rows per verifier step
    verify_every_seconds: float  # float-ok: Beat's interval between verifier steps, a duration


@dataclass(frozen=True)
class TaskConfig:
    """Every setting a task needs, as the use cases' own config objects."""

    accounts: tuple[str, ...]  # configured accounts; the first one asks for market data
    accumulation: AccumulationConfig
    execution: ExecutionConfig
    balances: BalanceConfig
    prices: PriceConfig
    venues: VenueConfig
    dust_scan: DustScanConfig
    trading_policy: TradingPolicy
    cleanup: CleanupConfig
    timing: Timing
    audit: AuditConfig

    @property
    def market_data_account(self) -> str:
        # Asset data and prices are the same for every account: the first configured one asks.
        return self.accounts[0]


@dataclass(frozen=True)
class Dependencies:
    unit_of_work: Callable[[], UnitOfWork]
    brokerage: Callable[[str], Brokerage]  # the adapter of a named account
    now: Callable[[], datetime]
    enqueue: Enqueue
    config: Callable[[], TaskConfig]
    # Trade latency histograms; observed after commit, never failing a task.
    latencies: Latencies = field(default_factory=NoLatencies)
    # The broker client's "server away" errors (the composition root knows the library).
    broker_errors: tuple[type[BaseException], ...] = ()


log = logging.getLogger("tasks.outages")


class DustpanTask(Task):
    """Base of every dustpan task: ``self.deps`` is what the composition root set on the app.

    A task that fails because PostgreSQL or Redis is away is retried with capped jittered
    backoff and one WARNING line, never dropped with a traceback: every task is safe to run
    twice. A task with a bounded ``max_retries`` (a scheduled job: its next tick comes anyway)
    stops retrying there, with one WARNING; ingestion and execution retry without end.
    """

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._retrying_outages(*args, **kwargs)
        except Reject as rejected:
            # A retry could not be queued because the broker is away (celery rejects the message
            # then, with a traceback): the rows still say what is left, and the sweep re-sends it.
            deps = getattr(self.app, "dependencies", None)
            reason = rejected.reason if isinstance(rejected.reason, BaseException) else None
            dependency = dependency_away(reason, deps.broker_errors if deps else ()) if reason else None
            if dependency is None:
                raise
            log.warning("%s: %s away, retry not queued (the sweep re-sends the work)", self.name, dependency)
            raise Ignore() from None

    def _retrying_outages(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (Retry, Reject, Ignore):
            raise
        except Exception as exc:
            deps = getattr(self.app, "dependencies", None)
            dependency = dependency_away(exc, deps.broker_errors if deps else ())
            if dependency is None or deps is None or self.request.called_directly:
                raise
            retries = self.request.retries
            if self.max_retries is not None and retries >= self.max_retries:
                what = first_line(exc)
                log.warning("%s: %s away, gave up after %d retries: %s", self.name, dependency, retries, what)
                raise Ignore() from None
            delay = outage_retry_delay(retries, deps.config().timing.max_countdown_seconds)
            log.warning("%s: %s away, retrying in %d s: %s", self.name, dependency, delay, first_line(exc))
            raise self.retry(exc=exc, countdown=delay) from None

    @property
    def deps(self) -> Dependencies:
        deps = getattr(self.app, "dependencies", None)
        if deps is None:
            raise RuntimeError(f"task {self.name}: no Dependencies set on the Celery app (see workers.celery_app)")
        return deps


R = TypeVar("R")


def recorded(job: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Record a scheduled job's run (started, finished, outcome, summary) around a body whose
    first argument is the ``Dependencies``."""

    def decorate(body: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(body)
        def run(deps: Dependencies, *args: Any, **kwargs: Any) -> R:
            run_id = start_run(deps.unit_of_work(), job, deps.now())
            try:
                result = body(deps, *args, **kwargs)
            except BaseException as exc:
                finish_run(deps.unit_of_work(), run_id, "failed", {"error": repr(exc)}, deps.now())
                raise
            finish_run(deps.unit_of_work(), run_id, "ok", result, deps.now())
            return result

        return run

    return decorate
