"""The execution use case speaking Alpaca's wire format to a local stub over real HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Execution
from tasks.audit import audit_books
from tasks.execution import ExecutionConfig, submit_execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.ports import TemporaryError
from tests.service.conftest import ALPACA_TIMEOUT, claimed_before
from tests.support.alpaca_stub import AlpacaStub
from workers.brokerage.alpaca import AlpacaBrokerage

D = Decimal
NOW = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)
EXECUTION = ExecutionConfig(D(1), rejection_backoff_seconds=30, freeze_after_rejections=3)


def pending_execution(uow: UnitOfWork, quantity: str) -> Execution:
    store_trades(uow, [IncomingTrade("a1", "AAPL", Side.BUY, D(quantity), D("187.5"), NOW)])
    [execution_id] = accumulate_symbol(uow, "AAPL", AccumulationConfig(D(1), 100, frozenset()), NOW).executions
    with uow:
        return uow.session.scalars(select(Execution).where(Execution.id == execution_id)).one()


def reread(uow: UnitOfWork, execution: Execution) -> Execution:
    with uow:
        return uow.session.scalars(select(Execution).where(Execution.id == execution.id)).one()


def brokerage(stub: AlpacaStub) -> AlpacaBrokerage:
    return AlpacaBrokerage(stub.url, stub.key_id, stub.secret_key, ALPACA_TIMEOUT)


def test_timeout_after_alpaca_accepted_is_resolved_by_lookup(uow: UnitOfWork, stub: AlpacaStub) -> None:
    execution = pending_execution(uow, "2.4")
    stub.prices["AAPL"] = D("187.43")
    stub.fail_next("timeout_after_accept")
    with pytest.raises(TemporaryError):
        submit_execution(uow, lambda _account: brokerage(stub), execution.id, EXECUTION, NOW)
    submit_execution(uow, lambda _account: brokerage(stub), execution.id, EXECUTION, NOW)
    stored = reread(uow, execution)
    assert (stored.status, stored.filled_quantity, stored.average_price) == ("filled", 2, D("187.43"))
    assert stub.posts_per_client_order_id == {execution.client_order_id: 1}
    assert audit_books(uow, D(1), NOW).ok


def test_alpaca_partial_fill_then_cancel_returns_the_rest(uow: UnitOfWork, stub: AlpacaStub) -> None:
    execution = pending_execution(uow, "5.5")
    stub.partial_fill_ratio = D("0.4")
    result = submit_execution(uow, lambda _account: brokerage(stub), execution.id, EXECUTION, NOW)
    stored = reread(uow, execution)
    assert (stored.status, stored.filled_quantity) == ("partially_filled", 2)
    assert len(result.follow_ups) == 1  # the 3 unfilled shares are ordered again
    assert audit_books(uow, D(1), NOW).ok


def test_alpaca_server_errors_leave_the_execution_pending(uow: UnitOfWork, stub: AlpacaStub) -> None:
    execution = pending_execution(uow, "1.5")
    claimed_before(uow, execution.id)  # a retry: it looks the order up before anything else
    stub.fail_next("500")
    with pytest.raises(TemporaryError):
        submit_execution(uow, lambda _account: brokerage(stub), execution.id, EXECUTION, NOW)
    assert reread(uow, execution).status == "pending"
    assert stub.posts_per_client_order_id == {}  # the lookup failed first: nothing was sent
