"""The cleanup job's pass over orphaned remainders (tasks.orphans), on real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select

from models.db import UnitOfWork
from models.domain.venue import VenueRules
from models.tables import Execution, Position, SymbolFreeze
from tasks.exits import new_sell
from tasks.guards import TradingPolicy
from tasks.orphans import retry_orphans

D = Decimal
NOW = datetime(2026, 4, 2, 16, 0, tzinfo=UTC)
POLICY = TradingPolicy(frozenset({"AUT-USD"}), frozenset({"default"}))
HOLDINGS = {"XYZ": D(2), "FRZ": D(2), "AUT-USD": D(2), "BUSY": D(2), "TINY": D("0.5")}


def orphan(uow: UnitOfWork, symbol: str, quantity: str = "2") -> None:
    with uow:
        uow.session.add(
            Position(
                account="default", symbol=symbol, quantity=D(quantity), average_price=D(30), status="dust_orphaned"
            )
        )
        uow.commit()


def run(uow: UnitOfWork, holdings: dict[str, Decimal] | None = HOLDINGS):  # type: ignore[no-untyped-def]
    return retry_orphans(uow, lambda _account: holdings, lambda _symbol: VenueRules(), POLICY, NOW)


def test_each_orphan_is_retried_or_skipped_by_the_rules(uow: UnitOfWork) -> None:
    for symbol in ("XYZ", "FRZ", "AUT-USD", "BUSY"):
        orphan(uow, symbol)
    orphan(uow, "TINY", "0.5")
    with uow:
        uow.session.add(SymbolFreeze(symbol="FRZ", reason="operator", source="manual"))
        new_sell(uow.session, "default", "BUSY", D(2), "dust_cleanup", NOW)
        uow.commit()
    lines = {line.symbol: line for line in run(uow).lines}
    assert {s: (line.action, line.reason) for s, line in lines.items()} == {
        "XYZ": ("retried", "order for 2"),
        "FRZ": ("skipped", "symbol is frozen"),
        "AUT-USD": ("skipped", "restricted symbol: never traded"),
        "BUSY": ("skipped", "an order for it is in flight"),
        "TINY": ("skipped", "the venue would refuse 0.5: quantity must be a multiple of 1"),
    }
    with uow:
        retry = uow.session.get(Execution, lines["XYZ"].execution_id)
        assert retry is not None and (retry.source, retry.side, retry.quantity) == ("dust_cleanup", "sell", 2)
    # A second run while the retry is in flight orders nothing more.
    assert {line.symbol: line.action for line in run(uow).lines}["XYZ"] == "skipped"


def test_orphan_the_broker_no_longer_holds_is_cleared_and_unreadable_positions_fail(uow: UnitOfWork) -> None:
    orphan(uow, "GONE")
    [failed] = run(uow, None).lines
    assert failed.action == "failed"
    [cleared] = run(uow, {}).lines
    assert (cleared.action, cleared.quantity) == ("cleared", 2)
    with uow:
        position = uow.session.scalars(select(Position).where(Position.symbol == "GONE")).one()
        assert (position.status, position.quantity) == ("open", 0)
    assert run(uow, {}).lines == []
