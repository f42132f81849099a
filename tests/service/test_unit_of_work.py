"""Autocommit units of work: one statement, one transaction; a stale pooled connection is replaced."""

from __future__ import annotations

import socket

import psycopg2
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from models import db
from models.db import UnitOfWork
from models.tables import Trade

INSERT_ONE = (
    "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash)"
    " VALUES ('t1', 'AAPL', 'buy', 1, 1, now(), 'h')"
)


def terminate(url: str, backend: int) -> None:
    """As a PostgreSQL restart would: the pooled connection of that backend dies."""
    admin = psycopg2.connect(url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (backend,))
    finally:
        admin.close()


def test_an_autocommit_statement_is_committed_when_it_returns(clean_database: str) -> None:
    with UnitOfWork(clean_database, autocommit=True) as uow:
        uow.session.execute(text(INSERT_ONE))
        # No commit(): another connection already sees the row.
        with UnitOfWork(clean_database) as other:
            assert other.session.scalar(select(func.count()).select_from(Trade)) == 1


def test_a_pooled_connection_idle_past_the_limit_is_pinged_and_replaced_when_dead(
    clean_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with UnitOfWork(clean_database, autocommit=True) as uow:
        backend = uow.session.scalar(text("SELECT pg_backend_pid()"))
    terminate(clean_database, backend)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0)

    with UnitOfWork(clean_database, autocommit=True) as uow:
        assert uow.session.scalar(text("SELECT pg_backend_pid()")) != backend


def test_a_transactional_unit_of_work_after_idle_is_pinged_without_opening_its_transaction(
    clean_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.dispose_engines()  # a pool of one connection: the next unit of work gets the same one back
    with UnitOfWork(clean_database) as uow:
        backend = uow.session.scalar(text("SELECT pg_backend_pid()"))
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0)

    with UnitOfWork(clean_database) as uow:  # the same pooled connection, alive: pinged
        # The ping left no transaction open: a SET TRANSACTION must be the transaction's first statement.
        uow.session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        assert uow.session.scalar(text("SHOW transaction_isolation")) == "repeatable read"
        assert uow.session.scalar(text("SELECT pg_backend_pid()")) == backend

    terminate(clean_database, backend)
    with UnitOfWork(clean_database) as uow:  # dead: the ping fails, and the pool connects anew
        assert uow.session.scalar(text("SELECT pg_backend_pid()")) != backend


def test_rows_on_a_dead_connection_raise_sqlalchemys_error_and_the_next_unit_of_work_connects_anew(
    clean_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600)  # no ping: the statement meets the dead connection
    with UnitOfWork(clean_database, autocommit=True) as uow:
        [(backend,)] = uow.rows("SELECT pg_backend_pid()", {})
    terminate(clean_database, backend)

    with pytest.raises(OperationalError), UnitOfWork(clean_database, autocommit=True) as uow:
        uow.rows("SELECT pg_backend_pid()", {})  # the API answers this 503
    with UnitOfWork(clean_database, autocommit=True) as uow:
        [(other,)] = uow.rows("SELECT pg_backend_pid()", {})
    assert other != backend


def test_rows_when_the_server_refuses_connections_raise_sqlalchemys_error() -> None:
    """As while PostgreSQL restarts: no pooled connection, and a new one is refused. The API
    answers sqlalchemy's OperationalError 503; the driver's own error would be a 500."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with (
        pytest.raises(OperationalError),
        UnitOfWork(f"postgresql://dustpan@127.0.0.1:{port}/none", autocommit=True) as uow,
    ):
        uow.rows("SELECT 1", {})


def test_rows_of_a_transactional_unit_of_work_roll_back_without_commit(clean_database: str) -> None:
    with UnitOfWork(clean_database) as uow:
        uow.rows(INSERT_ONE, {})
    with UnitOfWork(clean_database) as uow:
        assert uow.rows("SELECT count(*) FROM trades", {}) == [(0,)]
