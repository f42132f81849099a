"""Balances (SPEC 1.5): fetched with backoff on transient errors only, cached in PostgreSQL,
served with their age, and *unknown* (never zero) once older than the maximum age.

A risk-increasing order (a buy) is never sent on an unknown balance: ``ensure_known_balance``
is the gate ``submit_execution`` calls before placing a new buy. When the cached balance is
missing or stale the gate fetches it once itself, with the same retry policy but a short budget
of waiting, so a fresh fleet trades without waiting for the first Beat tick.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from models.db import UnitOfWork
from models.domain.quantities import money_text
from models.tables_ops import Balance
from tasks.ports import AccountBalance, Brokerage, BrokerageError, RateLimited, TemporaryError

Sleep = Callable[[float], None]  # float-ok: seconds, as time.sleep takes them

JITTER_RATIO = Decimal("0.25")  # each wait is its base (2, 4, 8 s) plus up to a quarter more, at random
MAX_WAIT_SECONDS = Decimal(30)  # no single wait is longer, whatever a broker's Retry-After says
# The gate's own fetch holds the execution's row lock and a worker: at most one short wait.
GATE_BUDGET_SECONDS = Decimal(3)
# After a failed fetch the gate does not ask the broker again this soon (the sweep re-submits
# pending buys every few seconds; the Beat fetch and the task's countdown carry on instead).
GATE_REFETCH_AFTER = timedelta(seconds=15)
UNKNOWN = "unknown"  # never 0: a balance that cannot be vouched for is not reported as empty


@dataclass(frozen=True)
class BalanceConfig:
    attempts: int = 4  # the first try plus 3 retries (SPEC 1.5)
    backoff_seconds: Decimal = Decimal(2)  # first wait; doubles after each failure
    max_age_seconds: int = 300
    budget_seconds: Decimal | None = None  # total waiting one fetch may plan; None: attempts alone bound it

    @property
    def max_age(self) -> timedelta:
        return timedelta(seconds=self.max_age_seconds)


@dataclass(frozen=True)
class KnownBalance:
    """What may be relied on for an account. The values are None whenever ``known`` is false,
    so an unknown balance can never be read as zero."""

    account: str
    known: bool
    cash: Decimal | None
    buying_power: Decimal | None
    equity: Decimal | None
    age: timedelta | None  # of the last values read from the broker; None if never fetched
    last_error: str | None = None

    @property
    def age_seconds(self) -> int | None:
        return None if self.age is None else self.age // timedelta(seconds=1)

    def as_json(self) -> dict[str, Any]:
        """Money as exact strings, and ``unknown`` (never 0) for a value that cannot be vouched for."""

        def value(amount: Decimal | None) -> str:
            return money_text(amount) if self.known and amount is not None else UNKNOWN

        return {
            "account": self.account,
            "known": self.known,
            "cash": value(self.cash),
            "buying_power": value(self.buying_power),
            "equity": value(self.equity),
            "age_seconds": self.age_seconds,  # of the last values read; null if never fetched
            "last_error": self.last_error,
        }

    def why_unknown(self, max_age: timedelta) -> str:
        seen = "never fetched" if self.age is None else f"last fetched {self.age_seconds} s ago"
        error = f"; last error: {self.last_error}" if self.last_error else ""
        return f"balance of account {self.account} unknown ({seen}, max age {max_age // timedelta(seconds=1)} s){error}"


@dataclass(frozen=True)
class BalanceFetch:
    account: str
    balance: AccountBalance | None  # None: every attempt failed
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.balance is not None


class BalanceUnknown(Exception):
    """A risk-increasing order must wait: the account's balance is unknown or too old."""


def fetch_balance(
    uow: UnitOfWork,
    brokerage: Brokerage,
    account: str,
    config: BalanceConfig,
    now: datetime,
    sleep: Sleep = time.sleep,
) -> BalanceFetch:
    """Read the balance (no transaction is open while waiting), then store the values or the failure."""
    fetched = read_balance(brokerage, account, config, sleep)
    with uow:
        record_fetch(uow.session, fetched, now)
        uow.commit()
    return fetched


def fetch_balances(
    uow: UnitOfWork,
    brokerages: Callable[[str], Brokerage],
    accounts: Iterable[str],
    config: BalanceConfig,
    now: datetime,
    sleep: Sleep = time.sleep,
) -> list[BalanceFetch]:
    """Every account in turn; one that cannot be fetched does not stop the others."""
    results = []
    for account in accounts:
        try:
            results.append(fetch_balance(uow, brokerages(account), account, config, now, sleep))
        except Exception as exc:  # e.g. an account whose adapter cannot be built: recorded, then the next one
            failed = BalanceFetch(account, None, 0, f"{type(exc).__name__}: {exc}")
            with uow:
                record_fetch(uow.session, failed, now)
                uow.commit()
            results.append(failed)
    return results


def read_balance(brokerage: Brokerage, account: str, config: BalanceConfig, sleep: Sleep = time.sleep) -> BalanceFetch:
    """``get_account`` with retries on transient errors only (timeouts, 5xx, 429); a 401, 403 or 422
    means a person must look, so it is tried once."""
    attempts = 0

    def attempt() -> AccountBalance:
        nonlocal attempts
        attempts += 1
        return brokerage.get_account()

    try:
        balance = _retrying(config, sleep)(attempt)
    except BrokerageError as exc:
        return BalanceFetch(account, None, attempts, f"{type(exc).__name__}: {exc}")
    return BalanceFetch(account, balance, attempts)


def _retrying(config: BalanceConfig, sleep: Sleep) -> Retrying:
    stop: stop_base = stop_after_attempt(config.attempts)
    if config.budget_seconds is not None:
        stop = stop | _stop_before_budget(config)
    return Retrying(
        retry=retry_if_exception_type(TemporaryError),
        stop=stop,
        wait=_Backoff(config),
        sleep=sleep,
        reraise=True,
    )


def _base_wait(config: BalanceConfig, state: RetryCallState) -> Decimal:
    """2, 4, 8 s... after the 1st, 2nd, 3rd failure, or the broker's Retry-After when longer."""
    wait = config.backoff_seconds * 2 ** (state.attempt_number - 1)
    error = state.outcome.exception() if state.outcome is not None else None
    if isinstance(error, RateLimited) and error.retry_after:
        wait = max(wait, Decimal(error.retry_after))
    return min(wait, MAX_WAIT_SECONDS)


class _Backoff(wait_base):
    """Exponential waits with jitter, so a fleet that failed together does not retry together."""

    def __init__(self, config: BalanceConfig) -> None:
        self.config = config

    def __call__(self, retry_state: RetryCallState) -> float:  # float-ok: seconds for tenacity's sleep
        jitter = self.config.backoff_seconds * JITTER_RATIO * Decimal(random.randrange(1001)) / 1000
        return float(_base_wait(self.config, retry_state) + jitter)  # float-ok: a duration


class _stop_before_budget(stop_base):
    """Stop when the waits so far plus the longest the next one can be would pass the budget.
    Counted from the planned waits, not the wall clock, so it also holds with an injected sleep."""

    def __init__(self, config: BalanceConfig) -> None:
        self.config = config

    def __call__(self, retry_state: RetryCallState) -> bool:
        assert self.config.budget_seconds is not None
        longest_next = _base_wait(self.config, retry_state) + self.config.backoff_seconds * JITTER_RATIO
        return Decimal(str(retry_state.idle_for)) + longest_next > self.config.budget_seconds


def record_fetch(session: Session, fetched: BalanceFetch, now: datetime) -> None:
    """Store a fetch's outcome; a failure keeps the last known values (and their fetched_at)."""
    attempt = {"attempted_at": now, "attempts": fetched.attempts, "last_error": fetched.error}
    values = {}
    if fetched.balance is not None:
        b = fetched.balance
        values = {"cash": b.cash, "buying_power": b.buying_power, "equity": b.equity, "fetched_at": now}
    session.execute(
        insert(Balance)
        .values(account=fetched.account, **attempt, **values)
        .on_conflict_do_update(index_elements=["account"], set_={**attempt, **values})
    )


def balance_as_known(session: Session, account: str, max_age: timedelta, now: datetime) -> KnownBalance:
    row = session.scalars(
        select(Balance).where(Balance.account == account).execution_options(populate_existing=True)
    ).one_or_none()
    if row is None or row.fetched_at is None:
        return KnownBalance(account, False, None, None, None, None, row.last_error if row else None)
    age = max(now - row.fetched_at, timedelta(0))  # a worker clock behind the fetcher's is not negative age
    values = (row.cash, row.buying_power, row.equity)
    if age > max_age or any(v is None for v in values):
        return KnownBalance(account, False, None, None, None, age, row.last_error)
    return KnownBalance(account, True, row.cash, row.buying_power, row.equity, age, row.last_error)


def known_balance(uow: UnitOfWork, account: str, max_age: timedelta, now: datetime) -> KnownBalance:
    with uow:
        return balance_as_known(uow.session, account, max_age, now)


def known_balances(uow: UnitOfWork, accounts: Iterable[str], max_age: timedelta, now: datetime) -> list[KnownBalance]:
    """The configured accounts and any other account with a stored balance, by name."""
    with uow:
        stored = uow.session.scalars(select(Balance.account)).all()
        names = sorted(set(accounts) | set(stored))
        return [balance_as_known(uow.session, name, max_age, now) for name in names]


def ensure_known_balance(
    uow: UnitOfWork,
    brokerage: Brokerage,
    account: str,
    config: BalanceConfig,
    now: datetime,
    sleep: Sleep = time.sleep,
) -> KnownBalance:
    """The gate before a risk-increasing order: the cached balance if fresh, else one fetch with
    a short budget (no transaction open while it runs), recorded in a transaction of its own.
    Raises ``BalanceUnknown`` if it stays unknown."""
    with uow:
        known = balance_as_known(uow.session, account, config.max_age, now)
        if known.known:
            return known
        row = uow.session.get(Balance, account)
        failed_lately = bool(
            row and row.last_error and row.attempted_at and now - row.attempted_at < GATE_REFETCH_AFTER
        )
    if not failed_lately:
        budget = min(config.budget_seconds or GATE_BUDGET_SECONDS, GATE_BUDGET_SECONDS)
        fetch_balance(uow, brokerage, account, replace(config, budget_seconds=budget), now, sleep)
        known = known_balance(uow, account, config.max_age, now)
        if known.known:
            return known
    raise BalanceUnknown(known.why_unknown(config.max_age))
