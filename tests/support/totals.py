"""The running totals against a full recomputation from every row, for assertions."""

from __future__ import annotations

from decimal import Decimal

import psycopg2

# What the triggers should have summed, read the slow way: every row of every table.
FULL_RECOMPUTATION = """
    SELECT symbol, sum(a), sum(f), sum(i), sum(r) FROM (
        SELECT symbol, CASE WHEN status IN ('received', 'rejected') THEN 0
                            WHEN side = 'buy' THEN quantity ELSE -quantity END AS a, 0 AS f, 0 AS i, 0 AS r
        FROM trades
        UNION ALL
        SELECT symbol, 0, CASE WHEN side = 'buy' THEN filled_quantity ELSE -filled_quantity END,
               CASE WHEN status NOT IN ('pending', 'submitted') THEN 0
                    WHEN side = 'buy' THEN quantity - filled_quantity ELSE filled_quantity - quantity END, 0
        FROM executions WHERE source = 'hedge'
        UNION ALL
        SELECT symbol, 0, 0, 0, quantity FROM execution_returns
    ) rows GROUP BY symbol
"""
RUNNING = """
    SELECT symbol, sum(trades_applied), sum(filled), sum(in_flight), sum(returned) FROM (
        SELECT symbol, trades_applied, filled, in_flight, returned FROM symbol_totals
        UNION ALL SELECT symbol, trades_applied, filled, in_flight, returned FROM symbol_total_deltas
    ) d GROUP BY symbol
"""

Sums = dict[str, tuple[Decimal, ...]]


def _non_zero(rows: list[tuple[object, ...]]) -> Sums:
    sums = {str(r[0]): tuple(Decimal(str(v)) for v in r[1:]) for r in rows}
    return {symbol: v for symbol, v in sums.items() if any(v)}


def running_and_recomputed(url: str) -> tuple[Sums, Sums]:
    """Both sides in one snapshot; symbols whose every total is zero are left out of both."""
    connection = psycopg2.connect(url)
    try:
        connection.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with connection.cursor() as cursor:
            cursor.execute(RUNNING)
            running = _non_zero(cursor.fetchall())
            cursor.execute(FULL_RECOMPUTATION)
            recomputed = _non_zero(cursor.fetchall())
        return running, recomputed
    finally:
        connection.close()
