"""Retention: move verified, settled trades of past months (and their contributions) to archive tables.

Only rows the background verifier has proved (at or below their symbol's checkpoint) and that
can no longer change (applied or rejected, nothing left open) move. Their applied sum is
carried from the checkpoint's verified part to its archived part in the same transaction, and
the triggers leave the running totals alone while ``dustpan.archiving`` is on, so the audit's
figures and the report's totals are the same before and after. Executions stay where they are
(a twentieth of the rows); the contribution checks read the archived contributions too.

Each batch is one transaction (killed mid-way: that batch never happened); a pass of the
verifier under way is restarted, since the rows it summed may have moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from models.db import UnitOfWork
from models.domain.quantities import ZERO, canonical
from tasks.audit_verifier import reset_pass

_ARCHIVABLE = """
    SELECT t.id FROM trades t JOIN audit_checkpoints cp ON cp.symbol = t.symbol
    WHERE t.symbol = :symbol AND t.seq <= cp.trade_seq AND t.received_at < :before
      AND t.status <> 'received' AND t.open_quantity = 0
"""
_CANDIDATES = text(
    """
    SELECT t.symbol, count(*) AS trades,
           coalesce(sum(CASE WHEN t.status = 'rejected' THEN 0 WHEN t.side = 'buy' THEN t.quantity
                             ELSE -t.quantity END), 0) AS applied
    FROM trades t JOIN audit_checkpoints cp ON cp.symbol = t.symbol
    WHERE t.seq <= cp.trade_seq AND t.received_at < :before AND t.status <> 'received' AND t.open_quantity = 0
    GROUP BY t.symbol ORDER BY t.symbol
    """
)
_TRADE_COLUMNS = (
    "id, seq, symbol, side, quantity, price, executed_at, received_at, content_hash, status, status_reason,"
    " accumulated_at, open_quantity"
)
_RETURNED_TRADE = ", ".join("t." + c.strip() for c in _TRADE_COLUMNS.split(","))
# One statement: the contributions and then the trades they point at leave together (the
# foreign key is checked at the statement's end), and land in the archive as they were.
_MOVE_BATCH = text(
    f"""
    WITH picked AS ({_ARCHIVABLE} ORDER BY t.seq LIMIT :batch),
    moved_contributions AS (
        DELETE FROM contributions c USING picked p WHERE c.trade_id = p.id
        RETURNING c.id, c.execution_id, c.trade_id, c.return_id, c.quantity
    ), archived_contributions AS (
        INSERT INTO archived_contributions (id, execution_id, trade_id, return_id, quantity)
        SELECT * FROM moved_contributions
    ), moved_trades AS (
        DELETE FROM trades t USING picked p WHERE t.id = p.id RETURNING {_RETURNED_TRADE}
    ), archived AS (
        INSERT INTO archived_trades ({_TRADE_COLUMNS}, archived_at) SELECT *, :now FROM moved_trades
    )
    SELECT count(*) AS trades,
           coalesce(sum(CASE WHEN status = 'rejected' THEN 0 WHEN side = 'buy' THEN quantity ELSE -quantity END), 0)
               AS applied
    FROM moved_trades
    """
)
_CARRY = text(
    "UPDATE audit_checkpoints SET trades_applied = trades_applied - :applied,"
    " archived_trades_applied = archived_trades_applied + :applied WHERE symbol = :symbol"
)


@dataclass
class SymbolArchive:
    symbol: str
    trades: int
    applied: Decimal


@dataclass
class ArchiveReport:
    before: datetime
    executed: bool
    symbols: list[SymbolArchive] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "before": self.before.isoformat(),
            "executed": self.executed,
            "symbols": [
                {"symbol": s.symbol, "trades": s.trades, "applied": canonical(s.applied)} for s in self.symbols
            ],
            "trades": sum(s.trades for s in self.symbols),
        }


def archive_before(
    uow: UnitOfWork, before: datetime, now: datetime, *, execute: bool = False, batch: int = 50_000
) -> ArchiveReport:
    """What would move (dry run), or move it in batches of ``batch`` trades."""
    with uow:
        planned = [
            SymbolArchive(r.symbol, r.trades, r.applied + ZERO)
            for r in uow.session.execute(_CANDIDATES, {"before": before})
        ]
    if not execute:
        return ArchiveReport(before, False, planned)
    report = ArchiveReport(before, True)
    for symbol in (p.symbol for p in planned):
        moved = SymbolArchive(symbol, 0, ZERO)
        while (step := _move_batch(uow, symbol, before, now, batch)).trades:
            moved.trades += step.trades
            moved.applied += step.applied
        report.symbols.append(moved)
    return report


def _move_batch(uow: UnitOfWork, symbol: str, before: datetime, now: datetime, batch: int) -> SymbolArchive:
    with uow:
        session = uow.session
        # A verifier pass under way may have summed rows that leave now: it starts again, after us.
        reset_pass(session)
        session.execute(text("SET LOCAL dustpan.archiving = 'on'"))  # the totals keep what moves
        row = session.execute(_MOVE_BATCH, {"symbol": symbol, "before": before, "now": now, "batch": batch}).one()
        session.execute(_CARRY, {"symbol": symbol, "applied": row.applied})
        uow.commit()
    return SymbolArchive(symbol, row.trades, row.applied + ZERO)
