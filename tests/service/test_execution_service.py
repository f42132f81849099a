"""submit_execution against real PostgreSQL and a fake brokerage far side."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Accumulator, Execution, ExecutionReturn, SymbolFreeze, Trade
from tasks.audit import audit_books
from tasks.execution import ExecutionConfig, SubmitOutcome, submit_execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.ports import TemporaryError
from tests.service.conftest import claimed_before
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
ACCUMULATION = AccumulationConfig(D(1), 1000, frozenset())
EXECUTION = ExecutionConfig(D(1), rejection_backoff_seconds=30, freeze_after_rejections=3)


def trade(n: int, quantity: str, side: Side = Side.BUY, symbol: str = "AAPL") -> IncomingTrade:
    return IncomingTrade(f"t{n}", symbol, side, D(quantity), D("100"), NOW)


def execution_for(uow: UnitOfWork, *trades: IncomingTrade) -> Execution:
    store_trades(uow, list(trades))
    [execution_id] = accumulate_symbol(uow, trades[0].symbol, ACCUMULATION, NOW).executions
    return fetch(uow, execution_id)


def fetch(uow: UnitOfWork, execution_id: object) -> Execution:
    with uow:
        return uow.session.scalars(select(Execution).where(Execution.id == execution_id)).one()


def test_filled_order_is_recorded_and_books_balance(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    execution = execution_for(uow, trade(1, "0.75"), trade(2, "1.5"))
    result = submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW)
    stored = fetch(uow, execution.id)
    assert result.outcome is SubmitOutcome.SETTLED
    assert (stored.status, stored.quantity, stored.filled_quantity, stored.average_price) == (
        "filled",
        2,
        2,
        100,
    )
    assert broker.posts == {execution.client_order_id: 1}
    assert audit_books(uow, D(1), NOW).ok


def test_order_the_broker_already_has_is_recorded_not_resent(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    execution = execution_for(uow, trade(1, "1.2"))
    # The worker claimed it, the broker accepted its order, and it died before recording it.
    claimed_before(uow, execution.id)
    broker.submit_order(_request(execution))
    submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW)
    assert broker.posts[execution.client_order_id] == 1
    assert fetch(uow, execution.id).status == "filled"


def test_timeout_after_accept_is_resolved_by_lookup_not_a_second_post(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    broker.timeout_after_accept = 1
    execution = execution_for(uow, trade(1, "3.1"))
    with pytest.raises(TemporaryError):
        submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW)
    assert fetch(uow, execution.id).status == "pending"
    submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW + timedelta(seconds=5))
    assert broker.posts[execution.client_order_id] == 1
    assert fetch(uow, execution.id).status == "filled"


def test_running_twice_after_settlement_changes_nothing(uow: UnitOfWork) -> None:
    broker = FakeBrokerage(fill_ratio=D("0.5"))
    execution = execution_for(uow, trade(1, "4.25"))
    submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW)
    again = submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW)
    assert again.outcome is SubmitOutcome.SETTLED and again.follow_ups == []
    with uow:
        assert len(uow.session.scalars(select(ExecutionReturn)).all()) == 1


def test_partial_fill_puts_the_unfilled_back_and_reorders_in_the_same_commit(uow: UnitOfWork) -> None:
    broker = FakeBrokerage(fill_ratio=D("0.5"))
    execution = execution_for(uow, trade(1, "4.25"))
    result = submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW)
    stored = fetch(uow, execution.id)
    assert (stored.status, stored.filled_quantity) == ("partially_filled", 2)
    [follow_up] = result.follow_ups
    again = fetch(uow, follow_up)
    assert (again.side, again.quantity, again.status) == ("buy", 2, "pending")
    with uow:
        returned = uow.session.scalars(select(ExecutionReturn)).one()
        assert (returned.quantity, returned.open_quantity) == (2, 0)
        assert "partially_filled" in returned.reason
        assert uow.session.get(Accumulator, "AAPL").net_quantity == D("0.25")
    assert audit_books(uow, D(1), NOW).ok


def test_rejections_back_off_then_freeze_the_symbol(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    broker.reject_symbols.add("AAPL")
    execution = execution_for(uow, trade(1, "2.5"))
    now = NOW
    for attempt in range(1, 4):
        result = submit_execution(uow, broker.by_account, execution.id, EXECUTION, now)
        assert fetch(uow, execution.id).status == "rejected"
        assert result.follow_ups == []  # held by the backoff: no loop
        with uow:
            accumulator = uow.session.get(Accumulator, "AAPL")
            assert accumulator.consecutive_rejections == attempt
            assert accumulator.hold_until == now + timedelta(seconds=30 * 2 ** (attempt - 1))
            assert accumulator.net_quantity == D("2.5")
        assert audit_books(uow, D(1), now).ok  # held symbols may sit above the threshold
        now = accumulator.hold_until
        retried = accumulate_symbol(uow, "AAPL", ACCUMULATION, now).executions
        if attempt < 3:
            [execution_id] = retried
            execution = fetch(uow, execution_id)
        else:
            assert retried == []
    with uow:
        freeze = uow.session.get(SymbolFreeze, "AAPL")
        assert freeze is not None and freeze.source == "rejections" and "3 orders in a row" in freeze.reason


def test_refused_order_is_rejected_and_put_back(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    broker.refuse_symbols.add("AAPL")
    execution = execution_for(uow, trade(1, "1.5"))
    submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW)
    stored = fetch(uow, execution.id)
    assert stored.status == "rejected" and "not tradable" in (stored.last_error or "")
    assert audit_books(uow, D(1), NOW).ok


def test_frozen_symbol_keeps_its_execution_pending(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    execution = execution_for(uow, trade(1, "1.5"))
    with uow:
        uow.session.add(SymbolFreeze(symbol="AAPL", reason="operator", source="manual"))
        uow.commit()
    assert submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW).outcome is SubmitOutcome.FROZEN
    assert broker.posts == {} and fetch(uow, execution.id).status == "pending"


def test_broker_outage_leaves_the_execution_pending_with_the_error(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    broker.unavailable = 1
    execution = execution_for(uow, trade(1, "1.5"))
    claimed_before(uow, execution.id)  # a retry: the lookup is the first call, and it fails
    with pytest.raises(TemporaryError):
        submit_execution(uow, broker.by_account, execution.id, EXECUTION, NOW)
    stored = fetch(uow, execution.id)
    assert stored.status == "pending" and "503" in (stored.last_error or "")
    assert broker.posts == {}


def _request(execution: Execution):  # type: ignore[no-untyped-def]
    from tasks.ports import OrderRequest

    return OrderRequest(execution.client_order_id, execution.symbol, execution.side, execution.quantity)


def test_only_the_first_claim_posts_without_a_lookup(uow: UnitOfWork) -> None:
    """Every POST follows a committed claim: on the first one the broker cannot hold an order
    under the client_order_id, so none is looked up; any later claim looks it up first."""
    broker = FakeBrokerage()
    lookups: list[str] = []
    look_up = broker.get_order_by_client_order_id
    broker.get_order_by_client_order_id = lambda cid: lookups.append(cid) or look_up(cid)  # type: ignore[method-assign]
    first = execution_for(uow, trade(1, "1.2"))
    assert submit_execution(uow, broker.by_account, first.id, EXECUTION, NOW).outcome is SubmitOutcome.SETTLED
    assert lookups == [] and broker.posts[first.client_order_id] == 1

    again = execution_for(uow, trade(2, "1.2"))
    claimed_before(uow, again.id)  # claimed by a worker that died before it could POST
    assert submit_execution(uow, broker.by_account, again.id, EXECUTION, NOW).outcome is SubmitOutcome.SETTLED
    assert lookups == [again.client_order_id] and broker.posts[again.client_order_id] == 1
    with uow:
        claims = uow.session.scalars(select(Execution.claims).where(Execution.id.in_([first.id, again.id])))
        assert sorted(claims) == [1, 2]


def received_at(uow: UnitOfWork) -> dict[str, datetime]:
    with uow:
        return {trade_id: at for trade_id, at in uow.session.execute(select(Trade.id, Trade.received_at))}


def test_latencies_are_the_row_stamps_and_an_order_reports_its_wait_once(uow: UnitOfWork) -> None:
    broker = FakeBrokerage(fill_ratio=D("0.5"))
    store_trades(uow, [trade(1, "0.75"), trade(2, "1.5")])
    accumulated = accumulate_symbol(uow, "AAPL", ACCUMULATION, NOW)
    received = received_at(uow)  # the database's clock at insert; NOW is the run's
    assert accumulated.waits == [NOW - received["t1"], NOW - received["t2"]]

    later = NOW + timedelta(seconds=2)
    [execution_id] = accumulated.executions
    first = submit_execution(uow, broker.by_account, execution_id, EXECUTION, later)
    assert first.submitted_wait == later - received["t1"]  # the oldest direct trade
    # Half filled, the rest put back and ordered again: that order holds only returned shares.
    [again] = first.follow_ups
    broker.fill_ratio = D(1)
    assert submit_execution(uow, broker.by_account, again, EXECUTION, later).submitted_wait is None
    assert submit_execution(uow, broker.by_account, execution_id, EXECUTION, later).submitted_wait is None
