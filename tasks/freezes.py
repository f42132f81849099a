"""Manual symbol freezes: nothing is ordered for a frozen symbol, trades keep accumulating."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.dialects.postgresql import insert

from models.db import UnitOfWork
from models.tables import Accumulator, SymbolFreeze


def freeze_symbol(uow: UnitOfWork, symbol: str, reason: str, now: datetime) -> bool:
    """True if this call froze it; an existing freeze (manual or automatic) is kept as it is."""
    with uow:
        created = uow.session.scalar(
            insert(SymbolFreeze)
            .values(symbol=symbol, reason=reason, source="manual", frozen_at=now)
            .on_conflict_do_nothing(index_elements=["symbol"])
            .returning(SymbolFreeze.symbol)
        )
        uow.commit()
    return created is not None


def unfreeze_symbol(uow: UnitOfWork, symbol: str, now: datetime) -> bool:
    """Lift a freeze and its rejection backoff; the sweep then orders what waited."""
    with uow:
        removed = uow.session.scalar(
            delete(SymbolFreeze).where(SymbolFreeze.symbol == symbol).returning(SymbolFreeze.symbol)
        )
        if removed is None:
            return False  # not frozen: nothing to lift, nothing written
        uow.session.execute(
            update(Accumulator)
            .where(Accumulator.symbol == symbol)
            .values(consecutive_rejections=0, hold_until=None, updated_at=now)
        )
        uow.commit()
    return bool(removed)
