"""Archiving a month: verified, settled trades leave, the audit stays ok and every total is unchanged."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import psycopg2

from models.db import UnitOfWork
from tasks.audit import AuditReport, audit_books
from tasks.audit_verifier import run_pass
from tasks.ingestion import store_trades
from tasks.retention import archive_before
from tasks.totals import book_rows
from tests.service.test_incremental_audit import NOW, history, problems, settle, trades
from tests.support.fakes import FakeBrokerage
from tests.support.totals import running_and_recomputed

FEBRUARY = datetime(2025, 2, 1, tzinfo=UTC)


def audit(uow: UnitOfWork) -> AuditReport:
    # The trade left waiting since January would fail the waiting limit: these tests are about the sums.
    return audit_books(uow, Decimal(1), NOW, max_waiting_seconds=10**9)


def run_sql(url: str, statement: str) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


def books(uow: UnitOfWork) -> tuple[object, ...]:
    with uow:
        return tuple(tuple(book_rows(uow.session, kind)) for kind in ("trade", "execution", "ledger"))


def january_history(uow: UnitOfWork, url: str) -> None:
    """Every trade was received in January 2025: AAPL's are all taken by a filled execution, MSFT's
    still hold an open 0.75 (the net below one share) and NVDA's waits to be accumulated."""
    history(uow)
    store_trades(uow, trades("w", "NVDA", ["0.5"]))
    run_sql(url, "UPDATE trades SET received_at = '2025-01-15T12:00:00Z'")


def test_archiving_a_month_keeps_the_audit_ok_and_every_total_unchanged(uow: UnitOfWork, clean_database: str) -> None:
    january_history(uow, clean_database)
    run_pass(uow, NOW)
    audit_before, books_before = audit(uow).as_json(), books(uow)
    running_before, _ = running_and_recomputed(clean_database)

    plan = archive_before(uow, FEBRUARY, NOW)
    assert [(s.symbol, s.trades) for s in plan.symbols] == [("AAPL", 4)]
    assert run_sql(clean_database, "SELECT count(*) FROM archived_trades") == [(0,)]  # a dry run moves nothing

    done = archive_before(uow, FEBRUARY, NOW, execute=True, batch=3)
    assert [(s.symbol, s.trades) for s in done.symbols] == [("AAPL", 4)]
    # Open or waiting trades stay, whatever their month.
    assert run_sql(clean_database, "SELECT id FROM trades ORDER BY id") == [("m0",), ("m1",), ("w0",)]
    assert run_sql(clean_database, "SELECT count(*) FROM archived_contributions") == [(4,)]
    for _ in ("right after archiving", "after the verifier's next pass"):
        report = audit(uow)
        assert report.ok, problems(report)
        assert report.as_json() == audit_before
        assert books(uow) == books_before
        assert running_and_recomputed(clean_database)[0] == running_before
        run_pass(uow, NOW)


def test_trades_after_an_archived_month_still_balance(uow: UnitOfWork, clean_database: str) -> None:
    january_history(uow, clean_database)
    run_pass(uow, NOW)
    archive_before(uow, FEBRUARY, NOW, execute=True)
    settle(uow, FakeBrokerage(), trades("b", "AAPL", ["0.25", "1.5"]))
    report = audit(uow)
    assert report.ok, problems(report)
    run_pass(uow, NOW)
    assert audit(uow).ok, problems(audit(uow))


def test_rows_the_verifier_has_not_proved_yet_are_not_archived(uow: UnitOfWork, clean_database: str) -> None:
    january_history(uow, clean_database)  # no verifier pass: no checkpoint
    assert archive_before(uow, FEBRUARY, NOW, execute=True).symbols == []
    assert run_sql(clean_database, "SELECT count(*) FROM archived_trades") == [(0,)]
