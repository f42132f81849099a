"""Audit: check the SPEC section 5 invariants for every symbol from one database snapshot.

The cost does not grow with history. Per symbol it reads the running totals (tasks.totals,
kept by triggers in the rows' own transactions), the live rows through their partial indexes
(waiting trades, open portions, in-flight executions), and the rows above the symbol's
checkpoint: what the background verifier (tasks.audit_verifier) last proved about the rows
below it, plus those rows, must equal the running totals. A row changed behind the triggers'
back is so found at once when it is new, and by the verifier's next pass when it is old.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from models.db import UnitOfWork
from models.domain.accumulation import crosses_threshold
from models.domain.quantities import ZERO, canonical
from tasks.totals import CURRENT_TOTALS_SQL

DEFAULT_MAX_WAITING_SECONDS = 60

# One statement, one snapshot: every total is taken at the same commit.
_TOTALS = text(
    f"""
    WITH totals AS ({CURRENT_TOTALS_SQL}),
    waiting AS (
        SELECT symbol, count(*) AS waiting, min(received_at) AS oldest
        FROM trades WHERE status = 'received' GROUP BY symbol
    ), open_trades AS (
        SELECT symbol, sum(open_quantity) AS open_trades FROM trades WHERE open_quantity <> 0 GROUP BY symbol
    ), open_returns AS (
        SELECT symbol, sum(open_quantity) AS open_returns
        FROM execution_returns WHERE open_quantity <> 0 GROUP BY symbol
    ), in_flight AS (
        SELECT symbol,
               sum(CASE WHEN side = 'buy' THEN quantity - filled_quantity ELSE filled_quantity - quantity END)
                   AS in_flight_total,
               count(*) AS in_flight_count
        FROM executions WHERE status IN ('pending', 'submitted') AND source = 'hedge' GROUP BY symbol
    ), symbols AS (
        SELECT symbol FROM totals UNION SELECT symbol FROM accumulators
        UNION SELECT symbol FROM waiting UNION SELECT symbol FROM audit_checkpoints
    )
    SELECT s.symbol,
           coalesce(t.trades_applied, 0) AS trades_total,
           coalesce(t.filled, 0) AS executed_total,
           coalesce(t.in_flight, 0) AS in_flight_running,
           coalesce(i.in_flight_total, 0) AS in_flight_total,
           coalesce(a.net_quantity, 0) AS residual,
           coalesce(o.open_trades, 0) + coalesce(r.open_returns, 0) AS open_total,
           coalesce(w.waiting, 0) AS waiting,
           w.oldest AS oldest_waiting,
           coalesce(i.in_flight_count, 0) AS in_flight_count,
           (a.hold_until IS NOT NULL AND a.hold_until > :now) OR f.symbol IS NOT NULL AS held,
           coalesce(c.trades_applied, 0) + coalesce(c.archived_trades_applied, 0) + nt.applied AS trades_verified,
           coalesce(c.filled, 0) + coalesce(c.archived_filled, 0) + ne.filled AS filled_verified,
           c.problems AS old_problems
    FROM symbols s
    LEFT JOIN totals t USING (symbol)
    LEFT JOIN waiting w USING (symbol)
    LEFT JOIN open_trades o USING (symbol)
    LEFT JOIN open_returns r USING (symbol)
    LEFT JOIN in_flight i USING (symbol)
    LEFT JOIN accumulators a USING (symbol)
    LEFT JOIN symbol_freezes f USING (symbol)
    LEFT JOIN audit_checkpoints c USING (symbol)
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(CASE WHEN tr.status IN ('received', 'rejected') THEN 0
                                 WHEN tr.side = 'buy' THEN tr.quantity ELSE -tr.quantity END), 0) AS applied
        FROM trades tr WHERE tr.symbol = s.symbol AND tr.seq > coalesce(c.trade_seq, 0)
    ) nt
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(CASE WHEN e.side = 'buy' THEN e.filled_quantity ELSE -e.filled_quantity END), 0)
                   AS filled
        FROM executions e
        WHERE e.symbol = s.symbol AND e.seq > coalesce(c.execution_seq, 0) AND e.source = 'hedge'
    ) ne
    ORDER BY s.symbol
    """
)

# Each execution above its symbol's checkpoint took exactly its quantity from its contributions
# (the verifier checks the ones below it). Driven per symbol and per execution through their
# indexes: the contributions of other executions are never read.
_CONTRIBUTION_MISMATCHES = text(
    """
    SELECT e.symbol, e.id
    FROM accumulators s
    LEFT JOIN audit_checkpoints cp ON cp.symbol = s.symbol
    JOIN LATERAL (
        SELECT id, symbol, side, quantity FROM executions
        WHERE symbol = s.symbol AND seq > coalesce(cp.execution_seq, 0) AND source = 'hedge'
        OFFSET 0  -- kept a per-symbol index range scan: never flattened into a scan of every execution
    ) e ON true
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(quantity), 0) AS taken FROM (
            SELECT quantity FROM contributions WHERE execution_id = e.id
            UNION ALL SELECT quantity FROM archived_contributions WHERE execution_id = e.id
        ) c
    ) t
    WHERE t.taken <> CASE WHEN e.side = 'buy' THEN e.quantity ELSE -e.quantity END
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
    waiting: int
    oldest_waiting_s: int | None
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


def audit_books(
    uow: UnitOfWork, threshold: Decimal, now: datetime, max_waiting_seconds: int = DEFAULT_MAX_WAITING_SECONDS
) -> AuditReport:
    with uow:
        uow.session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        rows = uow.session.execute(_TOTALS, {"now": now}).mappings().all()
        mismatched = {(r.symbol, str(r.id)) for r in uow.session.execute(_CONTRIBUTION_MISMATCHES)}
        sales = tuple(str(execution_id) for execution_id in uow.session.scalars(_LEDGER_MISMATCHES))
    symbols = [_audit_symbol(row, threshold, now, mismatched) for row in rows]
    overdue = any(s.oldest_waiting_s is not None and s.oldest_waiting_s > max_waiting_seconds for s in symbols)
    ok = all(s.balanced for s in symbols) and not overdue and not sales
    return AuditReport(ok=ok, symbols=symbols, unbalanced_sales=sales)


def _audit_symbol(row: Any, threshold: Decimal, now: datetime, mismatched: set[tuple[str, str]]) -> SymbolAudit:
    problems = _invariant_problems(row, threshold) + _running_total_problems(row)
    problems += [f"execution {eid} contributions do not add up" for sym, eid in mismatched if sym == row.symbol]
    if row.old_problems:
        problems += row.old_problems.splitlines()
    oldest = None if row.oldest_waiting is None else max(0, int((now - row.oldest_waiting).total_seconds()))
    return SymbolAudit(
        symbol=row.symbol,
        trades_total=row.trades_total + ZERO,
        executed_total=row.executed_total + ZERO,
        in_flight_total=row.in_flight_total + ZERO,
        residual=row.residual + ZERO,
        balanced=not problems,
        waiting=row.waiting,
        oldest_waiting_s=oldest,
        problems=tuple(problems),
    )


def _invariant_problems(row: Any, threshold: Decimal) -> list[str]:
    """SPEC section 5 on the running totals and the live rows."""
    problems = []
    accounted = row.executed_total + row.in_flight_total + row.residual
    if row.trades_total != accounted:
        problems.append(f"trades {row.trades_total} != executed + in flight + residual {accounted}")
    if row.open_total != row.residual:
        problems.append(f"open portions {row.open_total} != residual {row.residual}")
    quiet = row.waiting == 0 and row.in_flight_count == 0 and not row.held
    if quiet and crosses_threshold(row.residual, threshold):
        problems.append(f"nothing in flight but |residual| {row.residual} >= threshold {threshold}")
    return problems


def _running_total_problems(row: Any) -> list[str]:
    """The running totals against the rows: checkpoint + rows above it, and the live in-flight rows."""
    pairs = (
        ("applied trades", row.trades_total, row.trades_verified),
        ("filled executions", row.executed_total, row.filled_verified),
        ("in-flight executions", row.in_flight_running, row.in_flight_total),
    )
    return [f"running total of {name} {kept} != rows {found}" for name, kept, found in pairs if kept != found]
