"""The report's totals (trades by status, executions, the dust ledger) kept by triggers, against the rows."""

from __future__ import annotations

from decimal import Decimal

import psycopg2

from models.db import UnitOfWork
from tasks.sales import ledger_volume
from tasks.totals import book_rows, fold_deltas, ledger_totals
from tests.service.test_incremental_audit import history, settle, trades
from tests.support.fakes import FakeBrokerage

D = Decimal


def scanned(url: str, query: str) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return list(cursor.fetchall())
    finally:
        connection.close()


def kept(uow: UnitOfWork, kind: str, *fields: str) -> list[tuple[object, ...]]:
    with uow:
        return [
            tuple(getattr(r, f) for f in ("symbol", "side", "status", *fields)) for r in book_rows(uow.session, kind)
        ]


def test_trades_and_executions_by_status_match_a_scan_before_and_after_folding(
    uow: UnitOfWork, clean_database: str
) -> None:
    history(uow)
    rejecting = FakeBrokerage()
    rejecting.refuse_symbols.add("TSLA")
    settle(uow, rejecting, trades("r", "TSLA", ["1.25", "0.5"]))
    trade_scan = "SELECT symbol, side, status, count(*), sum(quantity) FROM trades GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    execution_scan = (
        "SELECT symbol, side, status, count(*), sum(quantity), sum(filled_quantity) FROM executions"
        " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )
    for _ in ("deltas only", "folded"):
        assert kept(uow, "trade", "row_count", "quantity") == scanned(clean_database, trade_scan)
        assert kept(uow, "execution", "row_count", "quantity", "filled") == scanned(clean_database, execution_scan)
        with uow:
            fold_deltas(uow.session)
            uow.commit()
    assert {status for _, _, status, *_ in kept(uow, "execution")} == {"filled", "rejected"}


def test_ledger_totals_equal_the_ledger_scan_as_rows_come_and_go(uow: UnitOfWork, clean_database: str) -> None:
    connection = psycopg2.connect(clean_database)
    with connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, filled_quantity, source)"
            " SELECT md5(n::text)::uuid, 'S' || (n % 3), 'sell', 2, 'filled', 'dp-l' || n, 2, 'sell'"
            " FROM generate_series(1, 30) n"
        )
        cursor.execute(
            "INSERT INTO dust_ledger (execution_id, account, symbol, requested_notional, price, quantity, proceeds,"
            " dust) SELECT md5(n::text)::uuid, 'default', 'S' || (n % 3), 2 * 10.25 + n / 100.0, 10.25, 2, 20.5,"
            " n / 100.0 FROM generate_series(1, 30) n"
        )
        cursor.execute("DELETE FROM dust_ledger WHERE symbol = 'S1' AND dust > 0.2")
    connection.close()
    assert ledger_totals(uow) == ledger_volume(uow)
    assert ledger_totals(uow, "S2") == ledger_volume(uow, "S2")
    assert ledger_totals(uow).sales == 30 - 3  # S1 with dust above 0.20: n = 22, 25, 28
