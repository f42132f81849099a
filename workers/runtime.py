"""Process-wide adapters built from settings: unit of work, brokerage, wake-up channel."""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache

import redis

from models.db import UnitOfWork
from models.domain.venue import VenueRules
from models.domain.venue_sources import RuleOverride
from tasks.balances import BalanceConfig
from tasks.dust import DustScanConfig
from tasks.execution import ExecutionConfig
from tasks.guards import TradingPolicy
from tasks.ingestion import AccumulationConfig
from tasks.venues import VenueConfig, venue_rules_for
from workers.brokerage import Brokerage
from workers.settings import Settings, get_settings

log = logging.getLogger(__name__)
WAKE_KEY = "dustpan:wake:{symbol}"
WAKE_TTL_SECONDS = 30
BOUNCED_KEY = "dustpan:bounced:{symbol}"


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
    with unit_of_work() as uow:
        return venue_rules_for(uow.session, [symbol], venue_config())[symbol]


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


def ingestion_queue(symbol: str) -> str:
    """A hot symbol may have its own queue (accumulation.queues), so a burst never delays the others."""
    return settings().accumulation.queues.get(symbol, "ingestion")


def enqueue_accumulate(symbol: str, countdown: float | None = None) -> None:  # float-ok: a duration
    from tasks.ingestion_tasks import accumulate

    accumulate.apply_async((symbol,), queue=ingestion_queue(symbol), countdown=countdown)


def wake_symbols(symbols: list[str]) -> None:
    """Ask for an accumulate run per symbol, at most one queued at a time per symbol.

    A hint only: if Redis or the enqueue fails, the trades are already committed and the
    sweep finds them. The task clears the flag just before it claims trades, so trades
    committed after its claim raise a new flag; a run that finds another under way leaves the
    flag raised and notes the bounce, and the run under way asks for a next one when it takes
    that note (ingestion_tasks).
    """

    client = redis_client()
    for symbol in symbols:
        try:
            if client.set(WAKE_KEY.format(symbol=symbol), 1, nx=True, ex=WAKE_TTL_SECONDS):
                # No delay: trades arriving while a run is under way raise the flag again,
                # and that run asks for the next one, which takes them all in one claim.
                enqueue_accumulate(symbol)
        except Exception as exc:  # redis and kombu raise several families; none may fail the webhook
            log.warning("wake for %s not sent (the sweep will pick it up): %s", symbol, exc)
            return


def note_bounced(symbol: str) -> None:
    """A run found the symbol's run under way: that one asks for a next run when it sees this."""
    try:
        redis_client().set(BOUNCED_KEY.format(symbol=symbol), 1, ex=WAKE_TTL_SECONDS)
    except (redis.RedisError, OSError) as exc:
        log.warning("bounce for %s not noted (the sweep will pick it up): %s", symbol, exc)


def take_bounced(symbol: str) -> bool:
    """Whether a run bounced off this one, clearing the note (a Redis failure says no: the sweep has it)."""
    try:
        return bool(redis_client().delete(BOUNCED_KEY.format(symbol=symbol)))
    except (redis.RedisError, OSError) as exc:
        log.warning("bounce note for %s not read (the sweep will pick it up): %s", symbol, exc)
        return False


def clear_wake(symbol: str) -> None:
    try:
        redis_client().delete(WAKE_KEY.format(symbol=symbol))
    except (redis.RedisError, OSError) as exc:
        log.warning("wake flag for %s not cleared (it expires by itself): %s", symbol, exc)


def submit_after_commit(execution_id: uuid.UUID) -> None:
    """Enqueue ``execution.submit``; if Redis is down the sweep finds the pending execution."""
    from tasks.execution_tasks import submit

    try:
        submit.delay(str(execution_id))
    except Exception as exc:  # kombu raises several families; none of them may fail the request
        log.warning("execution %s not enqueued (the sweep will pick it up): %s", execution_id, exc)


RESEND_KEY = "dustpan:resend:{kind}:{name}"


def resend_stale(symbols: list[str], execution_ids: list[uuid.UUID], hold_seconds: int) -> int:
    """Re-enqueue the accumulate runs and submits of work the sweep found stranded, each at most
    once per ``hold_seconds``: a deep queue makes everything in it look stranded, and a message
    per sweep tick for each would only deepen it. Returns how many messages were sent."""
    from tasks.execution_tasks import submit

    work: list[tuple[str, str, Callable[[], object]]] = [
        *(("accumulate", symbol, functools.partial(enqueue_accumulate, symbol)) for symbol in symbols),
        *(("submit", e.hex, functools.partial(submit.delay, str(e))) for e in execution_ids),
    ]
    client, sent = redis_client(), 0
    for kind, name, send in work:
        try:
            if client.set(RESEND_KEY.format(kind=kind, name=name), 1, nx=True, ex=hold_seconds):
                send()
                sent += 1
        except Exception as exc:  # kombu and redis raise several families; the next tick tries again
            log.warning("stranded work not re-sent (the next sweep tries again): %s", exc)
            break
    return sent
