"""Broker outcomes by evidence (SPEC 4): the execution use case against Alpaca's real answers,
served by the local stub over HTTP, on real PostgreSQL. Each case ends with the broker holding
exactly the shares the trades net to and no client order id sent twice."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Execution, SymbolFreeze
from models.tables_ops import AccountPause
from tasks.audit import audit_books
from tasks.execution import ExecutionConfig, SubmitOutcome, submit_execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.ports import TemporaryError
from tasks.sweeps import find_stranded_work
from tests.service.conftest import ALPACA_TIMEOUT, claimed_before
from tests.support.alpaca_stub import AlpacaStub
from workers.brokerage.alpaca import AlpacaBrokerage

D = Decimal
NOW = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)
CONFIG = ExecutionConfig(
    D(1),
    rejection_backoff_seconds=30,
    freeze_after_rejections=3,
    alert_after_unknown_outcomes=3,
    account_pause_seconds=300,
)


def pending_execution(uow: UnitOfWork, quantity: str, symbol: str = "AAPL", trade_id: str = "a1") -> Execution:
    store_trades(uow, [IncomingTrade(trade_id, symbol, Side.BUY, D(quantity), D("187.5"), NOW)])
    [execution_id] = accumulate_symbol(uow, symbol, AccumulationConfig(D(1), 100, frozenset()), NOW).executions
    return reread(uow, execution_id)


def reread(uow: UnitOfWork, execution_id: object) -> Execution:
    with uow:
        return uow.session.scalars(select(Execution).where(Execution.id == execution_id)).one()


def submit(uow: UnitOfWork, stub: AlpacaStub, execution: Execution, now: datetime = NOW) -> SubmitOutcome:
    with AlpacaBrokerage(stub.url, stub.key_id, stub.secret_key, ALPACA_TIMEOUT) as broker:
        return submit_execution(uow, lambda _account: broker, execution.id, CONFIG, now).outcome


def held_at_stub(stub: AlpacaStub, symbol: str) -> Decimal:
    position = stub.positions.get(symbol)
    return D(position["qty"]) if position else D(0)


def test_403_on_the_lookup_after_a_timeout_is_retried_never_settled(uow: UnitOfWork, stub: AlpacaStub) -> None:
    execution = pending_execution(uow, "2.4")
    stub.fail_next("timeout_after_accept")
    with pytest.raises(TemporaryError):
        submit(uow, stub, execution)  # the POST was accepted; its answer never came
    stub.fail_next("403")
    with pytest.raises(TemporaryError, match="403 forbidden"):
        submit(uow, stub, execution)  # the lookup answers 403: that says nothing about the order
    stored = reread(uow, execution.id)
    assert (stored.status, stored.unknown_outcomes) == ("pending", 2)

    assert submit(uow, stub, execution) is SubmitOutcome.SETTLED  # 200 on the lookup: the order is found
    assert reread(uow, execution.id).status == "filled"
    assert stub.posts_per_client_order_id == {execution.client_order_id: 1}
    assert held_at_stub(stub, "AAPL") == 2
    assert audit_books(uow, D(1), NOW).ok


def test_replaced_order_is_followed_to_its_filled_replacement(uow: UnitOfWork, stub: AlpacaStub) -> None:
    execution = pending_execution(uow, "3.5")
    stub.fail_next("replaced")

    assert submit(uow, stub, execution) is SubmitOutcome.SETTLED
    stored = reread(uow, execution.id)
    original = stub.order_by_client_order_id(execution.client_order_id)
    assert original is not None and original["status"] == "replaced" and original["filled_qty"] == "0"
    assert stored.broker_order_id == original["replaced_by"]  # the replacement's id is on the execution
    assert (stored.status, stored.filled_quantity) == ("filled", 3)
    assert held_at_stub(stub, "AAPL") == 3
    assert stub.posts_per_client_order_id == {execution.client_order_id: 1}
    assert audit_books(uow, D(1), NOW).ok


def test_timeout_while_following_a_replacement_holds_then_books_it(uow: UnitOfWork, stub: AlpacaStub) -> None:
    execution = pending_execution(uow, "1.2")
    stub.stall_seconds = 1.0
    stub.fail_next("replaced")  # the POST: stored as replaced, its fill on the replacement
    stub.fail_next("timeout")  # the GET of the replacement never answers
    with pytest.raises(TemporaryError):
        submit(uow, stub, execution)
    assert reread(uow, execution.id).status == "pending"  # held: neither settled nor re-ordered

    assert submit(uow, stub, execution) is SubmitOutcome.SETTLED  # lookup -> replaced -> replacement
    assert reread(uow, execution.id).status == "filled"
    assert held_at_stub(stub, "AAPL") == 1
    assert stub.posts_per_client_order_id == {execution.client_order_id: 1}


def test_422_on_post_while_the_order_exists_books_the_order(uow: UnitOfWork, stub: AlpacaStub) -> None:
    execution = pending_execution(uow, "4.9")
    stub.fail_next("422_after_accept")

    assert submit(uow, stub, execution) is SubmitOutcome.SETTLED
    stored = reread(uow, execution.id)
    assert (stored.status, stored.filled_quantity) == ("filled", 4)  # not rejected, not put back
    assert held_at_stub(stub, "AAPL") == 4
    assert stub.posts_per_client_order_id == {execution.client_order_id: 1}
    assert audit_books(uow, D(1), NOW).ok


def test_refusal_with_no_order_behind_it_is_settled_after_one_lookup(uow: UnitOfWork, stub: AlpacaStub) -> None:
    execution = pending_execution(uow, "1.5")
    stub.unknown_symbols.add("AAPL")

    assert submit(uow, stub, execution) is SubmitOutcome.SETTLED
    assert reread(uow, execution.id).status == "rejected"
    lookups = [r for r in stub.requests if r.path.startswith("/v2/orders:by_client_order_id")]
    assert len(lookups) == 1  # none before the first claim's POST; one before settling the refusal


def test_account_wide_403_pauses_the_account_alerts_once_and_freezes_nothing(
    uow: UnitOfWork, stub: AlpacaStub, caplog: pytest.LogCaptureFixture
) -> None:
    stub.account_refusal = "account is not allowed to short"
    executions = [pending_execution(uow, "1.5", symbol, f"t-{symbol}") for symbol in ("AAPL", "MSFT", "TSLA")]

    with caplog.at_level(logging.INFO, logger="tasks.execution"):
        outcomes = [submit(uow, stub, execution) for execution in executions]
        # The pause holds the others without asking the broker; later submits are no-ops.
        outcomes += [submit(uow, stub, execution, NOW + timedelta(seconds=10)) for execution in executions]

    assert set(outcomes) == {SubmitOutcome.ACCOUNT_PAUSED}
    assert len(stub.posts_per_client_order_id) == 1  # only the first one asked
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "account default paused" in errors[0].getMessage()
    with uow:
        assert uow.session.scalars(select(SymbolFreeze)).all() == []
        assert uow.session.get(AccountPause, "default") is not None
    assert {reread(uow, e.id).status for e in executions} == {"pending"}
    # The sweep leaves a paused account's executions alone until its probe time.
    stranded = find_stranded_work(uow, NOW + timedelta(seconds=60), D(1), timedelta(seconds=3), timedelta(seconds=5))
    assert stranded.executions == []

    # After the pause one probe goes out; the broker accepts, the pause lifts, the rest follow.
    stub.account_refusal = None
    later = NOW + timedelta(seconds=301)
    assert submit(uow, stub, executions[0], later) is SubmitOutcome.SETTLED
    with uow:
        assert uow.session.get(AccountPause, "default") is None
    assert [submit(uow, stub, e, later) for e in executions[1:]] == [SubmitOutcome.SETTLED] * 2
    assert [held_at_stub(stub, s) for s in ("AAPL", "MSFT", "TSLA")] == [1, 1, 1]
    assert max(stub.posts_per_client_order_id.values()) <= 2  # refused once, accepted once
    assert audit_books(uow, D(1), later).ok


def test_unknown_outcomes_alert_a_person_once_at_the_threshold(
    uow: UnitOfWork, stub: AlpacaStub, caplog: pytest.LogCaptureFixture
) -> None:
    execution = pending_execution(uow, "1.1")
    claimed_before(uow, execution.id)  # every claim starts with the lookup the 403s answer
    stub.fail_next("403", count=4)
    # A minute apart: past each cooldown of the symbol's order breaker, whose probes count too.
    with caplog.at_level(logging.WARNING, logger="tasks.execution"):
        for n in range(4):
            with pytest.raises(TemporaryError):
                submit(uow, stub, execution, NOW + timedelta(minutes=n))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "3 broker answers in a row said nothing" in errors[0]
    assert submit(uow, stub, execution, NOW + timedelta(minutes=5)) is SubmitOutcome.SETTLED
    assert reread(uow, execution.id).unknown_outcomes == 0
    assert stub.posts_per_client_order_id == {execution.client_order_id: 1}
