"""The usual record of a broker's answer is written in Core statements (``tasks.execution``
``_record_order``); everything else goes through the ORM (``tasks.settlement``). The two must
write the same rows: the same orders, answered the same way, recorded each way, compared."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from tasks import execution as execution_module
from tasks.audit import audit_books
from tasks.execution import ExecutionConfig, SubmitOutcome, submit_execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.ports import BrokerOrder, OrderRequest
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
ACCUMULATION = AccumulationConfig(D(1), 1000, frozenset())
EXECUTION = ExecutionConfig(D(1), rejection_backoff_seconds=30, freeze_after_rejections=3)


class SteppedBrokerage(FakeBrokerage):
    """Each order is first part-filled at 100 and working; the next lookup finds it filled at an
    average of 101 (buys) or 90 (sells)."""

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        self.posts[request.client_order_id] += 1
        order = BrokerOrder(
            f"o-{request.client_order_id}", request.client_order_id, request.symbol, request.side,
            request.quantity, "partially_filled", D(1), D(100),
        )  # fmt: skip
        self.orders[request.client_order_id] = order
        return order

    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        order = self.orders.get(client_order_id)
        if order is None:
            return None
        average = D(101) if order.side == Side.BUY.value else D(90)
        return replace(order, status="filled", filled_quantity=order.quantity, filled_average_price=average)


def trade_through(uow: UnitOfWork, symbol: str) -> list[SubmitOutcome]:
    """A buy of 3 (a new position), then a sell of 4 (through zero), each part-filled and working,
    then filled on the poll."""
    broker = SteppedBrokerage()
    outcomes: list[SubmitOutcome] = []
    for n, (side, quantity) in enumerate([(Side.BUY, "3.5"), (Side.SELL, "5")]):
        at = NOW + timedelta(minutes=n)
        store_trades(uow, [IncomingTrade(f"{symbol}-{n}", symbol, side, D(quantity), D(100), at)])
        [execution_id] = accumulate_symbol(uow, symbol, ACCUMULATION, at).executions
        for poll in range(2):
            result = submit_execution(uow, broker.by_account, execution_id, EXECUTION, at + timedelta(seconds=poll))
            outcomes.append(result.outcome)
    return outcomes


def rows(uow: UnitOfWork, symbol: str) -> dict[str, Any]:
    with uow:
        session = uow.session
        executions = session.execute(
            text(
                "SELECT side, quantity, status, filled_quantity, average_price, submit_attempts, claims,"
                " unknown_outcomes, last_error, claimed_by, claimed_until, submitted_at, updated_at"
                " FROM executions WHERE symbol = :symbol ORDER BY seq"
            ),
            {"symbol": symbol},
        ).all()
        positions = session.execute(
            text("SELECT quantity, average_price, status, updated_at FROM positions WHERE symbol = :symbol"),
            {"symbol": symbol},
        ).all()
        accumulator = session.execute(
            text("SELECT net_quantity, consecutive_rejections, hold_until FROM accumulators WHERE symbol = :symbol"),
            {"symbol": symbol},
        ).all()
    return {"executions": executions, "positions": positions, "accumulator": accumulator}


def test_the_core_record_and_the_orm_record_write_the_same_rows(
    uow: UnitOfWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    core = execution_module._record_order
    recorded: list[object] = []
    monkeypatch.setattr(execution_module, "_record_order", lambda *a: recorded.append(core(*a)) or recorded[-1])
    quick = trade_through(uow, "AAPL")
    assert len(recorded) == 4 and None not in recorded  # every answer took the Core path
    monkeypatch.setattr(execution_module, "_record_order", lambda *_args: None)  # the ORM path only
    orm = trade_through(uow, "MSFT")
    assert quick == orm == [SubmitOutcome.WORKING, SubmitOutcome.SETTLED] * 2
    assert rows(uow, "AAPL") == rows(uow, "MSFT")
    # Bought 3 (1 at 100, then 2 more: 101 on average); sold 4 (1 at 100, then 3 at 260/3, for
    # 90 on average): through zero, to short 1 entered at the last fill's price.
    assert rows(uow, "AAPL")["positions"][0][:2] == (D(-1), (D(260) / 3).quantize(D(1).scaleb(-18)))
    assert audit_books(uow, D(1), NOW + timedelta(minutes=5)).ok
