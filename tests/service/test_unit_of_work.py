"""Autocommit units of work: one statement, one transaction; a stale pooled connection is replaced."""

from __future__ import annotations

import psycopg2
import pytest
from sqlalchemy import func, select, text

from models import db
from models.db import UnitOfWork
from models.tables import Trade


def test_an_autocommit_statement_is_committed_when_it_returns(clean_database: str) -> None:
    with UnitOfWork(clean_database, autocommit=True) as uow:
        uow.session.execute(
            text(
                "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash)"
                " VALUES ('t1', 'AAPL', 'buy', 1, 1, now(), 'h')"
            )
        )
        # No commit(): another connection already sees the row.
        with UnitOfWork(clean_database) as other:
            assert other.session.scalar(select(func.count()).select_from(Trade)) == 1


def test_a_pooled_connection_idle_past_the_limit_is_pinged_and_replaced_when_dead(
    clean_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with UnitOfWork(clean_database, autocommit=True) as uow:
        backend = uow.session.scalar(text("SELECT pg_backend_pid()"))
    admin = psycopg2.connect(clean_database)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:  # as a PostgreSQL restart would: the pooled connection dies
            cursor.execute("SELECT pg_terminate_backend(%s)", (backend,))
    finally:
        admin.close()
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0)

    with UnitOfWork(clean_database, autocommit=True) as uow:
        assert uow.session.scalar(text("SELECT pg_backend_pid()")) != backend
