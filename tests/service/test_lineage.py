"""Trade -> execution lineage through rejections and re-executions (SPEC 1.10), on real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Execution
from tasks.execution import ExecutionConfig, submit_execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.lineage import is_completed, trade_executions, trade_ids_by_execution
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
ACCUMULATION = AccumulationConfig(D(1), 1000, frozenset())
NO_BACKOFF = ExecutionConfig(D(1), rejection_backoff_seconds=0, freeze_after_rejections=10)


def trade(n: int, quantity: str) -> IncomingTrade:
    return IncomingTrade(f"t{n}", "AAPL", Side.BUY, D(quantity), D("100"), NOW)


def first_execution(uow: UnitOfWork, *trades: IncomingTrade) -> Execution:
    store_trades(uow, list(trades))
    [execution_id] = accumulate_symbol(uow, "AAPL", ACCUMULATION, NOW).executions
    with uow:
        return uow.session.scalars(select(Execution).where(Execution.id == execution_id)).one()


def completed(uow: UnitOfWork, trade_id: str, quantity: str) -> bool:
    with uow:
        return is_completed(D(quantity), trade_executions(uow.session, trade_id))


def test_reexecution_of_a_rejected_execution_carries_its_trade_ids(uow: UnitOfWork) -> None:
    broker = FakeBrokerage()
    broker.reject_symbols.add("AAPL")
    rejected = first_execution(uow, trade(1, "0.75"), trade(2, "1.5"))
    [retry] = submit_execution(uow, broker.by_account, rejected.id, NO_BACKOFF, NOW).follow_ups
    broker.reject_symbols.clear()
    submit_execution(uow, broker.by_account, retry, NO_BACKOFF, NOW + timedelta(seconds=1))
    with uow:
        assert trade_ids_by_execution(uow.session, [retry]) == {retry: ["t1", "t2"]}
        shares = {(s.execution.id, s.quantity, s.filled, s.via_return) for s in trade_executions(uow.session, "t2")}
    assert shares == {(rejected.id, D("1.25"), 0, False), (retry, D("1.25"), D("1.25"), True)}
    assert completed(uow, "t1", "0.75")
    assert not completed(uow, "t2", "1.5")  # 0.25 of it still waits in the net


def test_partial_fill_then_refill_completes_every_trade_behind_it(uow: UnitOfWork) -> None:
    broker = FakeBrokerage(fill_ratio=D("0.5"))
    first = first_execution(uow, trade(1, "2"), trade(2, "2"))  # 4 shares: 2 fill, t2's 2 go back
    [retry] = submit_execution(uow, broker.by_account, first.id, NO_BACKOFF, NOW).follow_ups
    assert completed(uow, "t1", "2") and not completed(uow, "t2", "2")
    broker.fill_ratio = D(1)
    submit_execution(uow, broker.by_account, retry, NO_BACKOFF, NOW)
    with uow:
        assert trade_ids_by_execution(uow.session, [retry]) == {retry: ["t2"]}
    assert completed(uow, "t2", "2")
