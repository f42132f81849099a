"""What the position book says (SPEC 1.10): open positions with their value, realized P&L by
symbol and reason. Read-only; the API, the CLI and the report all render these same dicts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from models.db import UnitOfWork
from models.domain.quantities import canonical, money_text
from models.tables import Accumulator, Position, RealizedPnl
from models.tables_ops import PriceHealth

Json = dict[str, Any]


def open_positions(uow: UnitOfWork) -> list[Json]:
    """Positions with shares, valued at the last price seen (price feed first, then trades)."""
    last_price = func.coalesce(PriceHealth.last_price, Accumulator.last_price)
    query = (
        select(Position, last_price)
        .outerjoin(PriceHealth, PriceHealth.symbol == Position.symbol)
        .outerjoin(Accumulator, Accumulator.symbol == Position.symbol)
        .where(Position.quantity != 0)
        .order_by(Position.account, Position.symbol)
    )
    with uow:
        rows = uow.session.execute(query).all()
    return [_position_json(position, price) for position, price in rows]


def _position_json(position: Position, price: Decimal | None) -> Json:
    value = None if price is None else position.quantity * price
    unrealized = None
    if price is not None and position.average_price is not None:
        unrealized = (price - position.average_price) * position.quantity
    return {
        "account": position.account,
        "symbol": position.symbol,
        "quantity": canonical(position.quantity),
        "average_cost": None if position.average_price is None else canonical(position.average_price),
        "last_price": None if price is None else canonical(price),
        "value": None if value is None else money_text(value),
        "unrealized_pnl": None if unrealized is None else money_text(unrealized),
        "status": position.status,
    }


@dataclass(frozen=True)
class PnlFilter:
    since: datetime | None = None
    symbol: str | None = None
    limit: int = 1000  # entries listed; the totals always cover every matching entry


def realized_pnl(uow: UnitOfWork, selection: PnlFilter = PnlFilter()) -> Json:
    """``{"entries", "totals": [{"symbol", "reason", "pnl"}], "total"}``, totals summed in SQL."""
    conditions = []
    if selection.since is not None:
        conditions.append(RealizedPnl.created_at >= selection.since)
    if selection.symbol is not None:
        conditions.append(RealizedPnl.symbol == selection.symbol)
    entries_query = select(RealizedPnl).where(*conditions).order_by(RealizedPnl.id).limit(selection.limit)
    totals_query = (
        select(RealizedPnl.symbol, RealizedPnl.reason, func.sum(RealizedPnl.pnl))
        .where(*conditions)
        .group_by(RealizedPnl.symbol, RealizedPnl.reason)
        .order_by(RealizedPnl.symbol, RealizedPnl.reason)
    )
    with uow:
        entries = [_entry_json(row) for row in uow.session.scalars(entries_query)]
        totals = uow.session.execute(totals_query).all()
    return {
        "entries": entries,
        "totals": [{"symbol": s, "reason": r, "pnl": money_text(p)} for s, r, p in totals],
        "total": money_text(sum((p for _, _, p in totals), Decimal(0))),
    }


def _entry_json(row: RealizedPnl) -> Json:
    return {
        "account": row.account,
        "symbol": row.symbol,
        "quantity": canonical(row.quantity),
        "entry_price": canonical(row.entry_price),
        "price": canonical(row.exit_price),
        "pnl": money_text(row.pnl),
        "reason": row.reason,
        "execution_id": str(row.execution_id),
        "related_execution_id": None if row.related_execution_id is None else str(row.related_execution_id),
        "at": row.created_at.isoformat(),
    }
