"""Exits and the dust left after a partial exit (SPEC 1.7), on real PostgreSQL."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.venue import VenueRules
from models.tables import Execution, Position, RealizedPnl
from tasks.execution import ExecutionConfig, submit_execution
from tasks.exits import request_exit
from tasks.guards import Refused, TradingPolicy
from tests.support.fakes import FakeBrokerage
from workers.api_orders import REFUSAL_STATUS

D = Decimal
NOW = datetime(2026, 4, 2, 15, 0, tzinfo=UTC)
POLICY = TradingPolicy(frozenset(), frozenset({"default"}))


def config(min_position_value: str) -> ExecutionConfig:
    return ExecutionConfig(D(1), 30, 3, min_position_value=D(min_position_value))


def entered(uow: UnitOfWork, quantity: str = "100", price: str = "150") -> None:
    with uow:
        uow.session.add(Position(account="default", symbol="XYZ", quantity=D(quantity), average_price=D(price)))
        uow.commit()


def exit_all(uow: UnitOfWork) -> Execution:
    return request_exit(
        uow, POLICY, VenueRules(), symbol="XYZ", quantity=None, reason="stop loss", account="default", now=NOW
    )


def position(uow: UnitOfWork) -> Position:
    with uow:
        return uow.session.get(Position, ("default", "XYZ"))  # type: ignore[return-value]


def test_partial_exit_below_min_value_closes_the_remainder_with_dust_cleanup_pnl(uow: UnitOfWork) -> None:
    entered(uow)
    broker = FakeBrokerage(fill_ratio=D("0.98"), price=D(24))
    exit_order = exit_all(uow)
    result = submit_execution(uow, broker.by_account, exit_order.id, config("50"), NOW)
    [cleanup_id] = result.follow_ups  # 2 shares worth 48 < 50
    broker.fill_ratio = D(1)
    submit_execution(uow, broker.by_account, cleanup_id, config("50"), NOW)
    with uow:
        cleanup = uow.session.get(Execution, cleanup_id)
        assert cleanup is not None
        assert (cleanup.source, cleanup.quantity, cleanup.status) == ("dust_cleanup", 2, "filled")
        assert cleanup.parent_execution_id == exit_order.id
        records = uow.session.scalars(select(RealizedPnl).order_by(RealizedPnl.id)).all()
    assert [(r.reason, r.quantity, r.pnl) for r in records] == [
        ("stop loss", 98, D(-12348)),
        ("dust_cleanup", 2, D(-252)),
    ]
    assert records[1].related_execution_id == exit_order.id  # both trades in the P&L record
    assert (position(uow).quantity, position(uow).status) == (0, "open")


def test_failed_dust_order_keeps_the_remainder_as_dust_orphaned_and_warns(
    uow: UnitOfWork, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tasks.exits")
    entered(uow)
    broker = FakeBrokerage(fill_ratio=D("0.98"), price=D(24))
    [cleanup_id] = submit_execution(uow, broker.by_account, exit_all(uow).id, config("50"), NOW).follow_ups
    broker.reject_symbols.add("XYZ")
    submit_execution(uow, broker.by_account, cleanup_id, config("50"), NOW)
    remainder = position(uow)
    assert (remainder.quantity, remainder.status) == (2, "dust_orphaned")
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "orphaned" in warning.getMessage() and "XYZ" in warning.getMessage()


def test_min_value_zero_keeps_the_remainder(uow: UnitOfWork) -> None:
    entered(uow)
    broker = FakeBrokerage(fill_ratio=D("0.98"), price=D(24))
    assert submit_execution(uow, broker.by_account, exit_all(uow).id, config("0"), NOW).follow_ups == []
    assert (position(uow).quantity, position(uow).status) == (2, "open")


def test_remainder_worth_more_than_the_minimum_is_kept(uow: UnitOfWork) -> None:
    entered(uow)
    broker = FakeBrokerage(fill_ratio=D("0.5"), price=D(24))
    assert submit_execution(uow, broker.by_account, exit_all(uow).id, config("50"), NOW).follow_ups == []
    assert position(uow).quantity == 50


def test_exit_larger_than_the_position_is_refused(uow: UnitOfWork) -> None:
    entered(uow, quantity="3")
    with pytest.raises(Refused) as refused:
        request_exit(uow, POLICY, VenueRules(), symbol="XYZ", quantity=D(4), reason="x", account="default", now=NOW)
    assert (REFUSAL_STATUS.get(refused.value.error, 422), refused.value.error) == (409, "insufficient_position")
