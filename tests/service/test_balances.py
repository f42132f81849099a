"""Balances (SPEC 1.5) on real PostgreSQL with a fake brokerage: backoff on transient errors only,
last known balance served with its age, unknown (never 0) past the max age, and buys gated on it.

The clock is the ``now`` argument and the waits go to an injected ``sleep`` that only records them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Execution
from models.tables_ops import Balance
from tasks.balances import BalanceConfig, fetch_balance, fetch_balances, known_balance
from tasks.execution import ExecutionConfig, SubmitOutcome, submit_execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.ports import (
    AccountBalance,
    BrokerageError,
    BrokerageMisconfigured,
    InsufficientFunds,
    InvalidOrder,
    RateLimited,
    TemporaryError,
)
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
CONFIG = BalanceConfig()  # the defaults: the first try plus 3 retries, 2 s / 4 s / 8 s, max age 300 s
EXECUTION = ExecutionConfig(D(1), 30, 3, balances=CONFIG)
ACCUMULATION = AccumulationConfig(D(1), 1000, frozenset())
# The jitter bounds the module promises: each wait is its base plus up to a quarter of the first wait.
FIRST_WAIT, SECOND_WAIT, THIRD_WAIT = (D(2), D("2.5")), (D(4), D("4.5")), (D(8), D(9))


class AccountFeed(FakeBrokerage):
    """The fake far side, with scripted answers for GET /v2/account."""

    def __init__(self, *errors: BrokerageError) -> None:
        super().__init__()
        self.account_errors = list(errors)
        self.account_calls = 0
        self.always_failing: BrokerageError | None = None

    def get_account(self) -> AccountBalance:
        self.account_calls += 1
        if self.always_failing is not None:
            raise self.always_failing
        if self.account_errors:
            raise self.account_errors.pop(0)
        return self.balance


class Waits(list[Decimal]):
    """A sleep that does not sleep: it records what it was asked to wait."""

    def __call__(self, seconds: float) -> None:  # float-ok: tenacity passes seconds
        self.append(D(str(seconds)))


def within(value: Decimal, bounds: tuple[Decimal, Decimal]) -> bool:
    return bounds[0] <= value <= bounds[1]


def stored(uow: UnitOfWork, account: str = "default") -> Balance:
    with uow:
        row = uow.session.get(Balance, account)
    assert row is not None
    return row


def test_transient_errors_twice_then_success_takes_three_attempts_waiting_2_then_4_seconds(uow: UnitOfWork) -> None:
    broker = AccountFeed(TemporaryError("503 Service Unavailable"), RateLimited("429 Too Many Requests"))
    broker.balance = AccountBalance(D("1234.56"), D("2469.12"), D("5000.005"))
    waits = Waits()
    fetched = fetch_balance(uow, broker, "default", CONFIG, NOW, sleep=waits)
    assert (fetched.ok, fetched.attempts, broker.account_calls) == (True, 3, 3)
    assert len(waits) == 2 and within(waits[0], FIRST_WAIT) and within(waits[1], SECOND_WAIT)
    row = stored(uow)
    assert (row.cash, row.buying_power, row.equity) == (D("1234.56"), D("2469.12"), D("5000.005"))
    assert (row.fetched_at, row.attempted_at, row.attempts, row.last_error) == (NOW, NOW, 3, None)


@pytest.mark.parametrize(
    "error",
    [
        BrokerageMisconfigured("401 Unauthorized"),
        InsufficientFunds("403 Forbidden"),
        InvalidOrder("422 Unprocessable Entity"),
    ],
    ids=["401", "403", "422"],
)
def test_an_error_a_person_must_fix_is_tried_once_without_waiting(uow: UnitOfWork, error: BrokerageError) -> None:
    broker = AccountFeed(error)
    waits = Waits()
    fetched = fetch_balance(uow, broker, "default", CONFIG, NOW, sleep=waits)
    assert (fetched.ok, fetched.attempts, broker.account_calls, waits) == (False, 1, 1, [])
    row = stored(uow)
    assert row.attempts == 1 and str(error) in (row.last_error or "")
    assert (row.cash, row.fetched_at) == (None, None)
    assert not known_balance(uow, "default", CONFIG.max_age, NOW).known


def test_default_fetch_is_the_first_try_plus_three_retries_waiting_2_then_4_then_8_seconds(uow: UnitOfWork) -> None:
    broker = AccountFeed()
    broker.always_failing = TemporaryError("503 service unavailable")
    waits = Waits()
    failed = fetch_balance(uow, broker, "default", CONFIG, NOW, sleep=waits)
    assert (failed.ok, failed.attempts, broker.account_calls) == (False, 4, 4)
    assert len(waits) == 3
    assert within(waits[0], FIRST_WAIT) and within(waits[1], SECOND_WAIT) and within(waits[2], THIRD_WAIT)


def test_a_rate_limit_waits_as_long_as_the_broker_asks(uow: UnitOfWork) -> None:
    waits = Waits()
    fetch_balance(uow, AccountFeed(RateLimited("429", retry_after=7)), "default", CONFIG, NOW, sleep=waits)
    assert len(waits) == 1 and within(waits[0], (D(7), D("7.5")))


def test_never_fetched_is_unknown_not_zero(uow: UnitOfWork) -> None:
    balance = known_balance(uow, "default", CONFIG.max_age, NOW)
    assert not balance.known
    assert (balance.cash, balance.buying_power, balance.equity, balance.age) == (None, None, None, None)


def test_failed_fetches_keep_the_last_known_balance_with_its_age_until_the_max_age(uow: UnitOfWork) -> None:
    broker = AccountFeed()
    fetch_balance(uow, broker, "default", CONFIG, NOW, sleep=Waits())
    broker.always_failing = TemporaryError("read timeout")
    waits = Waits()
    failed = fetch_balance(uow, broker, "default", CONFIG, NOW + timedelta(seconds=100), sleep=waits)
    assert (failed.ok, failed.attempts) == (False, 4)
    assert len(waits) == 3 and within(waits[2], THIRD_WAIT)

    served = known_balance(uow, "default", CONFIG.max_age, NOW + timedelta(seconds=100))
    assert served.known and served.cash == D(100_000) and served.age_seconds == 100
    assert "read timeout" in (served.last_error or "")
    at_max_age = known_balance(uow, "default", CONFIG.max_age, NOW + timedelta(seconds=300))
    assert at_max_age.known and at_max_age.age_seconds == 300

    too_old = known_balance(uow, "default", CONFIG.max_age, NOW + timedelta(seconds=301))
    assert not too_old.known and too_old.age_seconds == 301
    assert (too_old.cash, too_old.buying_power, too_old.equity) == (None, None, None)
    assert stored(uow).cash == D(100_000)  # kept in the row, just no longer vouched for


def test_one_account_failing_does_not_stop_the_others(uow: UnitOfWork) -> None:
    healthy, locked_out = AccountFeed(), AccountFeed(BrokerageMisconfigured("401 Unauthorized"))
    adapters = {"main": healthy, "locked": locked_out}

    def brokerages(account: str) -> FakeBrokerage:
        return adapters[account]  # "missing" raises KeyError, as runtime.brokerage does

    results = fetch_balances(uow, brokerages, ["locked", "missing", "main"], CONFIG, NOW, sleep=Waits())
    assert [(r.account, r.ok) for r in results] == [("locked", False), ("missing", False), ("main", True)]
    assert stored(uow, "main").cash == D(100_000)
    assert "KeyError" in (stored(uow, "missing").last_error or "")


# --- the gate: no risk-increasing order on an unknown balance -------------------------------------


def pending_execution(uow: UnitOfWork, side: Side) -> Execution:
    store_trades(uow, [IncomingTrade("t1", "AAPL", side, D("2.5"), D("100"), NOW)])
    [execution_id] = accumulate_symbol(uow, "AAPL", ACCUMULATION, NOW).executions
    with uow:
        return uow.session.scalars(select(Execution).where(Execution.id == execution_id)).one()


def reloaded(uow: UnitOfWork, execution: Execution) -> Execution:
    with uow:
        return uow.session.scalars(select(Execution).where(Execution.id == execution.id)).one()


def test_a_fresh_fleet_fetches_the_balance_itself_before_its_first_buy(uow: UnitOfWork) -> None:
    broker = AccountFeed()
    execution = pending_execution(uow, Side.BUY)
    result = submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW, sleep=Waits())
    assert result.outcome is SubmitOutcome.SETTLED and reloaded(uow, execution).status == "filled"
    assert broker.account_calls == 1 and stored(uow).fetched_at == NOW


def test_a_buy_waits_while_the_balance_is_unknown_and_goes_out_once_it_is_known(uow: UnitOfWork) -> None:
    broker = AccountFeed()
    broker.always_failing = TemporaryError("503 Service Unavailable")
    execution = pending_execution(uow, Side.BUY)
    waits = Waits()
    result = submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW, sleep=waits)
    assert result.outcome is SubmitOutcome.WAITING_FOR_BALANCE
    waiting = reloaded(uow, execution)
    assert (waiting.status, waiting.submit_attempts, broker.posts) == ("pending", 0, {})
    assert "balance of account default unknown (never fetched" in (waiting.last_error or "")
    # The gate's own fetch holds the execution's lock: one short wait, not the full 2 + 4 s.
    assert broker.account_calls == 2 and len(waits) == 1 and within(waits[0], FIRST_WAIT)

    # Re-sent by the sweep moments later: the broker is not asked again so soon.
    again = submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW + timedelta(seconds=5))
    assert again.outcome is SubmitOutcome.WAITING_FOR_BALANCE and broker.account_calls == 2

    broker.always_failing = None
    assert fetch_balance(uow, broker, "default", CONFIG, NOW + timedelta(seconds=60), sleep=Waits()).ok
    sent = submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW + timedelta(seconds=61))
    assert sent.outcome is SubmitOutcome.SETTLED
    assert broker.posts == {execution.client_order_id: 1}
    assert (reloaded(uow, execution).status, reloaded(uow, execution).last_error) == ("filled", None)


def test_a_buy_is_not_sent_on_a_balance_older_than_the_max_age(uow: UnitOfWork) -> None:
    broker = AccountFeed()
    fetch_balance(uow, broker, "default", CONFIG, NOW, sleep=Waits())
    broker.always_failing = BrokerageMisconfigured("401 Unauthorized")
    execution = pending_execution(uow, Side.BUY)
    later = NOW + timedelta(seconds=301)
    result = submit_execution(uow, broker.by_account, execution.id, EXECUTION, later, sleep=Waits())
    assert result.outcome is SubmitOutcome.WAITING_FOR_BALANCE and broker.posts == {}
    assert "last fetched 301 s ago" in (reloaded(uow, execution).last_error or "")


def test_a_sell_is_never_blocked_by_an_unknown_balance(uow: UnitOfWork) -> None:
    broker = AccountFeed()
    broker.always_failing = TemporaryError("503 Service Unavailable")
    execution = pending_execution(uow, Side.SELL)
    result = submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW, sleep=Waits())
    assert result.outcome is SubmitOutcome.SETTLED and reloaded(uow, execution).status == "filled"
    assert broker.account_calls == 0


def test_cli_balances_shows_unknown_instead_of_zero(clean_database: str, broker_url: str, tmp_path: Path) -> None:
    uow = UnitOfWork(clean_database)
    fetch_balance(uow, AccountFeed(), "default", CONFIG, datetime.now(UTC), sleep=Waits())
    with uow:
        uow.session.add(Balance(account="old", cash=D(5), buying_power=D(5), equity=D(5), fetched_at=NOW))
        uow.commit()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(DUSTPAN_DATABASE_URL=clean_database, DUSTPAN_BROKER_URL=broker_url, DUSTPAN_ACCOUNTS="default,never")
    shown = subprocess.run(
        [sys.executable, "-m", "workers.cli", "balances"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[1]: line for line in shown.stdout.splitlines() if line.startswith("│")}
    assert "100000.00" in lines["default"]
    assert lines["never"].count("unknown") == 4  # cash, buying power, equity, age
    assert lines["old"].count("unknown") == 3 and " 5.00" not in lines["old"]
