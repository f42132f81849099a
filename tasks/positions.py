"""The position book: every fill moves it; sales, exits and dust cleanups realise P&L."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypeVar

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.domain.positions import PRICE_SCALE, Holding, apply_fill
from models.domain.quantities import ZERO, Side, signed
from models.tables import Accumulator, Execution, Position, RealizedPnl
from models.tables_ops import PriceHealth


def lock_position(session: Session, account: str, symbol: str) -> Position:
    """The account's position in the symbol, locked (created on its first fill).

    Row lock: fills, sales and exits of one account's symbol change the book one at a time.
    Pending changes of the caller's other rows are not flushed for it: a position's lock does
    not depend on them, and they go out with the commit, one statement a row."""
    key = {"of_account": account, "of_symbol": symbol}
    with session.no_autoflush:
        return _lock_or_create(
            lambda: session.scalars(_LOCK_POSITION, key).one_or_none(),
            lambda: session.execute(_CREATE_POSITION, key),
        )


def lock_holding(connection: Connection, account: str, symbol: str) -> Holding:
    """``lock_position`` for a Core caller: the position's quantity and average, row locked."""
    key = {"of_account": account, "of_symbol": symbol}
    row = _lock_or_create(
        lambda: connection.execute(_LOCK_HOLDING, key).one_or_none(),
        lambda: connection.execute(_CREATE_POSITION, key),
    )
    return Holding(row.quantity, row.average_price)


def _lock_or_create(lock: Callable[[], _Locked | None], create: Callable[[], object]) -> _Locked:
    found = lock()
    if found is None:  # the symbol's first fill in this account: one round trip more, once
        create()
        found = lock()
        if found is None:
            raise LookupError("a position created under its own lock could not be read back")
    return found


_Locked = TypeVar("_Locked")
_THE_POSITION = (
    Position.account == bindparam("of_account", type_=Position.account.type),
    Position.symbol == bindparam("of_symbol", type_=Position.symbol.type),
)
_LOCK_POSITION = select(Position).where(*_THE_POSITION).with_for_update()
_LOCK_HOLDING = select(Position.quantity, Position.average_price).where(*_THE_POSITION).with_for_update()
_CREATE_POSITION = (
    insert(Position)
    .values(
        account=bindparam("of_account", type_=Position.account.type),
        symbol=bindparam("of_symbol", type_=Position.symbol.type),
    )
    .on_conflict_do_nothing(index_elements=["account", "symbol"])
)


def committed_to_sell(session: Session, account: str, symbol: str) -> Decimal:
    """Shares already promised to in-flight sales, exits and cleanups of this position."""
    return (
        session.scalar(
            select(func.coalesce(func.sum(Execution.quantity - Execution.filled_quantity), 0)).where(
                Execution.account == account,
                Execution.symbol == symbol,
                Execution.side == "sell",
                Execution.source != "hedge",
                Execution.status.in_(("pending", "submitted")),
            )
        )
        or ZERO
    )


def last_known_price(session: Session, symbol: str) -> Decimal | None:
    """The price feed's last price, else the last accumulated trade's; None when neither is known."""
    feed = session.scalar(select(PriceHealth.last_price).where(PriceHealth.symbol == symbol))
    if feed is not None:
        return feed
    return session.scalar(select(Accumulator.last_price).where(Accumulator.symbol == symbol))


def pnl_reason(execution: Execution) -> str:
    """An exit realises P&L under the operator's reason; a notional sale under ``sale`` (SPEC 1.10)."""
    if execution.source == "exit":
        return execution.reason or "exit"
    return "sale" if execution.source == "sell" else execution.source


def unbooked_fill(
    filled: Decimal, average: Decimal | None, booked: Decimal, booked_average: Decimal | None
) -> tuple[Decimal, Decimal] | None:
    """The part of a cumulative fill (``filled`` at ``average``) not booked yet (``booked`` at
    ``booked_average``): its shares and their price; None when there is none."""
    delta = filled - booked
    if delta <= 0 or average is None:
        return None
    booked_value = (booked_average or ZERO) * booked
    return delta, ((average * filled - booked_value) / delta).quantize(PRICE_SCALE, rounding=ROUND_HALF_EVEN)


def book_fill(session: Session, execution: Execution, filled: Decimal, average: Decimal | None, now: datetime) -> None:
    """Apply the part of ``filled`` not booked yet (the broker reports cumulative fills)."""
    unbooked = unbooked_fill(filled, average, execution.filled_quantity, execution.average_price)
    if unbooked is None:
        return
    delta, price = unbooked
    position = lock_position(session, execution.account, execution.symbol)
    entry_price = position.average_price
    effect = apply_fill(Holding(position.quantity, entry_price), signed(Side(execution.side), delta), price)
    if execution.source != "hedge" and effect.realized_quantity > 0 and entry_price is not None:
        session.add(
            RealizedPnl(
                account=execution.account,
                symbol=execution.symbol,
                execution_id=execution.id,
                related_execution_id=execution.parent_execution_id,
                quantity=effect.realized_quantity,
                entry_price=entry_price,
                exit_price=price,
                pnl=(price - entry_price) * effect.realized_quantity,
                reason=pnl_reason(execution),
                created_at=now,
            )
        )
    position.quantity = effect.holding.quantity
    position.average_price = effect.holding.average_price
    position.updated_at = now
