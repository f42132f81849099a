"""Per-symbol running totals: kept by triggers (migration 0007), folded and read here.

Each statement that changes trades, executions or execution returns appends its net change
per symbol to ``symbol_total_deltas`` in its own transaction (killed writer: no delta). The
totals are ``symbol_totals`` plus the deltas not folded yet; folding moves deltas into the
totals in one statement, so a reader's snapshot sees each change exactly once either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.orm import Session

from models.domain.quantities import ZERO

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


def fold_deltas(session: Session) -> None:
    """Fold pending deltas into the totals (the caller commits)."""
    session.execute(_FOLD)


def current_totals(session: Session) -> dict[str, Totals]:
    rows = session.execute(text(CURRENT_TOTALS_SQL)).all()
    return {r.symbol: Totals(r.trades_applied, r.filled, r.in_flight, r.returned) for r in rows}
