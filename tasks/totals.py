"""Running totals kept by triggers (migration 0007), folded and read here.

Each statement that changes trades, executions or execution returns appends its net change
per symbol to ``symbol_total_deltas`` (what the audit sums), and each change to trades,
executions or the dust ledger its change per symbol, side and status to ``book_total_deltas``
(what the report shows), in the writer's own transaction (killed writer: no delta). The
totals are the folded rows plus the deltas not folded yet; folding moves deltas into the
totals in one statement, so a reader's snapshot sees each change exactly once either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.quantities import ZERO

if TYPE_CHECKING:
    from tasks.sales import LedgerVolume

# DELETE ... RETURNING and the upsert are one statement: a delta is folded once or not at all.
# Two folds at once: the second waits on the first's deleted rows, then skips them.
_FOLD = text(
    """
    WITH moved AS (
        DELETE FROM symbol_total_deltas RETURNING symbol, trades_applied, filled, in_flight, returned
    )
    INSERT INTO symbol_totals AS t (symbol, trades_applied, filled, in_flight, returned, updated_at)
    SELECT symbol, sum(trades_applied), sum(filled), sum(in_flight), sum(returned), now()
    FROM moved GROUP BY symbol ORDER BY symbol
    ON CONFLICT (symbol) DO UPDATE SET
        trades_applied = t.trades_applied + excluded.trades_applied,
        filled = t.filled + excluded.filled,
        in_flight = t.in_flight + excluded.in_flight,
        returned = t.returned + excluded.returned,
        updated_at = excluded.updated_at
    """
)

_FOLD_BOOKS = text(
    """
    WITH moved AS (
        DELETE FROM book_total_deltas
        RETURNING kind, symbol, side, status, row_count, quantity, filled, proceeds, dust
    )
    INSERT INTO book_totals AS t (kind, symbol, side, status, row_count, quantity, filled, proceeds, dust)
    SELECT kind, symbol, side, status, sum(row_count), sum(quantity), sum(filled), sum(proceeds), sum(dust)
    FROM moved GROUP BY kind, symbol, side, status ORDER BY kind, symbol, side, status
    ON CONFLICT (kind, symbol, side, status) DO UPDATE SET
        row_count = t.row_count + excluded.row_count,
        quantity = t.quantity + excluded.quantity,
        filled = t.filled + excluded.filled,
        proceeds = t.proceeds + excluded.proceeds,
        dust = t.dust + excluded.dust
    """
)
_BOOK_ROWS = text(
    """
    SELECT symbol, side, status, sum(row_count) AS row_count, sum(quantity) AS quantity, sum(filled) AS filled,
           sum(proceeds) AS proceeds, sum(dust) AS dust
    FROM (SELECT kind, symbol, side, status, row_count, quantity, filled, proceeds, dust FROM book_totals
          UNION ALL
          SELECT kind, symbol, side, status, row_count, quantity, filled, proceeds, dust FROM book_total_deltas) d
    WHERE kind = :kind
    GROUP BY symbol, side, status HAVING sum(row_count) <> 0
    ORDER BY symbol, side, status
    """
)

# Folded totals plus pending deltas, per symbol: what every committed row adds up to.
CURRENT_TOTALS_SQL = """
    SELECT symbol, sum(trades_applied) AS trades_applied, sum(filled) AS filled,
           sum(in_flight) AS in_flight, sum(returned) AS returned
    FROM (SELECT symbol, trades_applied, filled, in_flight, returned FROM symbol_totals
          UNION ALL
          SELECT symbol, trades_applied, filled, in_flight, returned FROM symbol_total_deltas) d
    GROUP BY symbol
"""


@dataclass(frozen=True)
class Totals:
    trades_applied: Decimal = ZERO
    filled: Decimal = ZERO
    in_flight: Decimal = ZERO
    returned: Decimal = ZERO


@dataclass(frozen=True)
class BookRow:
    symbol: str
    side: str
    status: str
    row_count: int
    quantity: Decimal
    filled: Decimal
    proceeds: Decimal
    dust: Decimal


def fold_deltas(session: Session) -> None:
    """Fold pending deltas into the totals (the caller commits)."""
    session.execute(_FOLD)
    session.execute(_FOLD_BOOKS)


def book_rows(session: Session, kind: str) -> list[BookRow]:
    """Rows (``trade``, ``execution`` or ``ledger``) by symbol, side and status: counts and sums."""
    rows = session.execute(_BOOK_ROWS, {"kind": kind}).mappings()
    return [BookRow(**(dict(r) | {"row_count": int(r["row_count"])})) for r in rows]


def ledger_totals(uow: UnitOfWork, symbol: str | None = None) -> LedgerVolume:
    """The dust ledger's sales, proceeds and dust from the kept totals: no pass over the ledger."""
    from tasks.sales import LedgerVolume  # here: a one-shot `dustpan audit` does not load the sales use cases

    with uow:
        rows = [r for r in book_rows(uow.session, "ledger") if symbol is None or r.symbol == symbol]
    return LedgerVolume(
        sum(r.row_count for r in rows), sum((r.proceeds for r in rows), ZERO), sum((r.dust for r in rows), ZERO)
    )


def current_totals(session: Session) -> dict[str, Totals]:
    rows = session.execute(text(CURRENT_TOTALS_SQL)).all()
    return {r.symbol: Totals(r.trades_applied, r.filled, r.in_flight, r.returned) for r in rows}
