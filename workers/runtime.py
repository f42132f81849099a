"""The composition root: process-wide adapters built from settings (unit of work, brokerage,
enqueue) and the ``Dependencies`` object the tasks reach them through."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from functools import lru_cache

import redis

from models.db import UnitOfWork
from models.domain.venue import VenueRules
from models.domain.venue_sources import RuleOverride
from tasks.balances import BalanceConfig
from tasks.deps import AuditConfig, CleanupConfig, Dependencies, TaskConfig, Timing
from tasks.dust import DustScanConfig
from tasks.execution import ExecutionConfig
from tasks.guards import TradingPolicy
from tasks.ingestion import AccumulationConfig
from tasks.order_breaker import BreakerConfig
from tasks.ports import Brokerage, Enqueue, Latencies, NoLatencies
from tasks.prices import PriceConfig
from tasks.venues import VenueConfig, rules_for_symbol
from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def settings() -> Settings:
    return get_settings()


def database_url() -> str:
    url = settings().database_url
    if not url:
        raise SystemExit("dustpan: DUSTPAN_DATABASE_URL is not set (dustpan up starts an embedded database)")
    return url


def unit_of_work(*, autocommit: bool = False) -> UnitOfWork:
    return UnitOfWork(database_url(), autocommit=autocommit)


def accumulation_config() -> AccumulationConfig:
    section = settings().accumulation
    return AccumulationConfig(section.threshold, section.batch_size, frozenset(section.restricted_symbols))


def execution_config() -> ExecutionConfig:
    section = settings().execution
    return ExecutionConfig(
        settings().accumulation.threshold,
        section.rejection_backoff_seconds,
        section.freeze_after_rejections,
        settings().dust.min_position_value,
        balance_config(),
        alert_after_unknown_outcomes=section.alert_after_unknown_outcomes,
        account_pause_seconds=section.account_pause_seconds,
        claim_lease_seconds=section.claim_lease_seconds,
        calls_per_symbol=section.calls_per_symbol,
        breaker=BreakerConfig(
            section.failures_to_open, section.breaker_cooldown_seconds, section.breaker_max_cooldown_seconds
        ),
    )


def balance_config() -> BalanceConfig:
    section = settings().balances
    return BalanceConfig(section.attempts, section.backoff_seconds, section.max_age_seconds)


def trading_policy() -> TradingPolicy:
    config = settings()
    return TradingPolicy(frozenset(config.accumulation.restricted_symbols), frozenset(config.accounts))


def venue_config() -> VenueConfig:
    venues = settings().venues
    overrides = {
        symbol: RuleOverride(rule.whole_shares, rule.step, rule.min_quantity, rule.min_notional)
        for symbol, rule in venues.rules.items()
    }
    return VenueConfig(venues.whole_shares, overrides)


def venue_rules(symbol: str) -> VenueRules:
    """The symbol's rules: the row ``venues.sync`` wrote from the broker's asset data (the
    configured default when never synced), config overrides on top (``tasks.venues``)."""
    return rules_for_symbol(unit_of_work(), symbol, venue_config())


def dust_scan_config() -> DustScanConfig:
    return DustScanConfig(trading_policy(), venue_config(), settings().operations.hysteresis)


def brokerage(account: str = "default") -> Brokerage:
    """The adapter of a named account (adapters are built without I/O, once per process)."""
    return _brokerage_for_process(os.getpid(), account)


@lru_cache(maxsize=32)
def _brokerage_for_process(_pid: int, account: str) -> Brokerage:
    config = settings()
    own = config.accounts.get(account)
    if own is None:
        raise KeyError(f"account {account!r} is not configured")
    if (own.brokerage or config.brokerage) == "alpaca":
        from workers.brokerage.alpaca import AlpacaBrokerage

        key_id, secret = own.alpaca_key_id or config.alpaca_key_id, own.alpaca_secret_key or config.alpaca_secret_key
        if not (key_id and secret):
            raise SystemExit(f"dustpan: account {account}: DUSTPAN_ALPACA_KEY_ID and _SECRET_KEY are required")
        return AlpacaBrokerage(
            own.alpaca_trading_url or config.alpaca_trading_url,
            key_id,
            secret,
            config.alpaca_timeout_seconds,
            data_url=own.alpaca_data_url or config.alpaca_data_url,
            connect_timeout_seconds=min(config.alpaca_connect_timeout_seconds, config.alpaca_timeout_seconds),
        )
    from workers.brokerage.paper import PaperBrokerage

    return PaperBrokerage(database_url(), config.paper, account=account)


def redis_client() -> redis.Redis:
    return _redis_for_process(os.getpid())


@lru_cache(maxsize=1)
def _redis_for_process(_pid: int) -> redis.Redis:
    return redis.Redis.from_url(settings().broker_url or "", socket_timeout=5, socket_connect_timeout=5)


_task_config: tuple[Settings, TaskConfig] | None = None


def task_config() -> TaskConfig:
    # Settings are read once per process (get_settings is cached), so this is built once too.
    global _task_config
    config = settings()
    if _task_config is None or _task_config[0] is not config:
        _task_config = (config, _build_task_config(config))
    return _task_config[1]


def _build_task_config(config: Settings) -> TaskConfig:
    return TaskConfig(
        accounts=tuple(config.accounts),
        accumulation=accumulation_config(),
        execution=execution_config(),
        balances=balance_config(),
        prices=PriceConfig(config.prices.freeze_after_failures, config.prices.cooldown_seconds),
        venues=venue_config(),
        dust_scan=dust_scan_config(),
        trading_policy=trading_policy(),
        cleanup=CleanupConfig(
            config.dust.broker_cleanup_usd,
            config.dust.normalize_usd,
            config.operations.cleanup_execute,
            config.operations.normalize_execute,
            config.dust.consolidate_usd,
        ),
        audit=AuditConfig(
            config.audit.max_waiting_seconds,
            config.audit.verify_period_seconds,
            config.audit.verify_chunk_rows,
            float(config.schedule.audit_verify_seconds),  # float-ok: a duration
        ),
        timing=Timing(
            poll_seconds=config.execution.poll_seconds,
            balances_seconds=int(config.schedule.balances_seconds),
            max_countdown_seconds=config.celery.max_countdown_seconds,
            pending_stale_seconds=config.execution.pending_stale_seconds,
            submitted_stale_seconds=config.execution.submitted_stale_seconds,
        ),
    )


def dependencies(enqueue: Enqueue, latencies: Latencies | None = None) -> Dependencies:
    """The composition root: what every task reaches its world through (tasks.deps)."""
    return Dependencies(
        unit_of_work=unit_of_work,
        brokerage=brokerage,
        now=now,
        enqueue=enqueue,
        config=task_config,
        latencies=latencies or NoLatencies(),
        broker_errors=(redis.ConnectionError, redis.TimeoutError),  # a task meeting one is retried
    )
