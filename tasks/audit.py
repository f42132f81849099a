"""Audit: check the SPEC section 5 invariants for every symbol from one database snapshot."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from models.db import UnitOfWork
from models.domain.accumulation import crosses_threshold
from models.domain.quantities import ZERO, canonical

log = logging.getLogger(__name__)

# One statement, one snapshot: every total is taken at the same commit.
_TOTALS = text(
    """
    WITH trades_by_symbol AS (
        SELECT symbol,
               sum(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END)
                   FILTER (WHERE status = 'accumulated') AS trades_total,
               sum(open_quantity) AS open_trades,
               count(*) FILTER (WHERE status = 'received') AS waiting
        FROM trades GROUP BY symbol
    ), executions_by_symbol AS (
        SELECT symbol,
               sum(CASE WHEN side = 'buy' THEN filled_quantity ELSE -filled_quantity END) AS executed_total,
               sum(CASE WHEN side = 'buy' THEN quantity - filled_quantity ELSE filled_quantity - quantity END)
                   FILTER (WHERE status IN ('pending', 'submitted')) AS in_flight_total,
               count(*) FILTER (WHERE status IN ('pending', 'submitted')) AS in_flight_count
        FROM executions WHERE source = 'hedge' GROUP BY symbol
    ), returns_by_symbol AS (
        SELECT symbol, sum(open_quantity) AS open_returns FROM execution_returns GROUP BY symbol
    ), symbols AS (
        SELECT symbol FROM trades_by_symbol UNION SELECT symbol FROM accumulators
    )
    SELECT s.symbol,
           coalesce(t.trades_total, 0) AS trades_total,
           coalesce(e.executed_total, 0) AS executed_total,
           coalesce(e.in_flight_total, 0) AS in_flight_total,
           coalesce(a.net_quantity, 0) AS residual,
           coalesce(t.open_trades, 0) + coalesce(r.open_returns, 0) AS open_total,
           coalesce(t.waiting, 0) AS waiting,
           coalesce(e.in_flight_count, 0) AS in_flight_count,
           (a.hold_until IS NOT NULL AND a.hold_until > :now) OR f.symbol IS NOT NULL AS held
    FROM symbols s
    LEFT JOIN trades_by_symbol t USING (symbol)
    LEFT JOIN executions_by_symbol e USING (symbol)
    LEFT JOIN returns_by_symbol r USING (symbol)
    LEFT JOIN accumulators a USING (symbol)
    LEFT JOIN symbol_freezes f USING (symbol)
    ORDER BY s.symbol
    """
)

# Each execution took exactly its quantity from its contributions.
_CONTRIBUTION_MISMATCHES = text(
    """
    SELECT e.symbol, e.id
    FROM executions e LEFT JOIN contributions c ON c.execution_id = e.id
    WHERE e.source = 'hedge'
    GROUP BY e.symbol, e.id, e.side, e.quantity
    HAVING coalesce(sum(c.quantity), 0) <> CASE WHEN e.side = 'buy' THEN e.quantity ELSE -e.quantity END
    """
)


# Every notional sale: requested = proceeds + dust (+ unfilled notional and slippage of its fill).
# Simplest form: a scan of the ledger (also a CHECK constraint on each row); the incremental
# audit can fold it into its running totals.
_LEDGER_MISMATCHES = text(
    "SELECT execution_id FROM dust_ledger"
    " WHERE requested_notional <> proceeds + dust + unfilled_notional + slippage ORDER BY id"
)


@dataclass(frozen=True)
class SymbolAudit:
    symbol: str
    trades_total: Decimal
    executed_total: Decimal
    in_flight_total: Decimal
    residual: Decimal
    balanced: bool
    problems: tuple[str, ...]


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    symbols: list[SymbolAudit]
    unbalanced_sales: tuple[str, ...] = ()  # ledger rows where requested != proceeds + dust (+ unfilled)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "unbalanced_sales": list(self.unbalanced_sales),
            "symbols": [
                {
                    k: (canonical(v) if isinstance(v, Decimal) else list(v) if isinstance(v, tuple) else v)
                    for k, v in asdict(s).items()
                }
                for s in self.symbols
            ],
        }


def audit_books(uow: UnitOfWork, threshold: Decimal, now: datetime) -> AuditReport:
    with uow:
        uow.session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        rows = uow.session.execute(_TOTALS, {"now": now}).mappings().all()
        mismatched = {(r.symbol, str(r.id)) for r in uow.session.execute(_CONTRIBUTION_MISMATCHES)}
        sales = tuple(str(execution_id) for execution_id in uow.session.scalars(_LEDGER_MISMATCHES))
    symbols = [_audit_symbol(row, threshold, mismatched) for row in rows]
    return AuditReport(ok=all(s.balanced for s in symbols) and not sales, symbols=symbols, unbalanced_sales=sales)


def _audit_symbol(row: Any, threshold: Decimal, mismatched: set[tuple[str, str]]) -> SymbolAudit:
    problems = []
    accounted = row.executed_total + row.in_flight_total + row.residual
    if row.trades_total != accounted:
        problems.append(f"trades {row.trades_total} != executed + in flight + residual {accounted}")
    if row.open_total != row.residual:
        problems.append(f"open portions {row.open_total} != residual {row.residual}")
    quiet = row.waiting == 0 and row.in_flight_count == 0 and not row.held
    if quiet and crosses_threshold(row.residual, threshold):
        problems.append(f"nothing in flight but |residual| {row.residual} >= threshold {threshold}")
    problems += [f"execution {eid} contributions do not add up" for sym, eid in mismatched if sym == row.symbol]
    return SymbolAudit(
        symbol=row.symbol,
        trades_total=row.trades_total + ZERO,
        executed_total=row.executed_total + ZERO,
        in_flight_total=row.in_flight_total + ZERO,
        residual=row.residual + ZERO,
        balanced=not problems,
        problems=tuple(problems),
    )
