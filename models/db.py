"""Engine and session factory, and the unit of work that owns one transaction."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

# A pooled connection idle longer than this is checked with a SELECT 1 before a unit of work
# uses it (say, after a PostgreSQL restart); one in steady use is not: a ping per checkout is a
# round trip per webhook group, and three per order (claim, record, accumulate run). A
# connection that breaks in use anyway makes SQLAlchemy drop the whole pool, and the task is
# retried (tasks.deps.DustpanTask).
PING_AFTER_IDLE_SECONDS = 1

_engines: dict[tuple[str, bool], Engine] = {}
# sessionmaker() builds a Session subclass, and the first session of each new class sets up its
# event dispatch: a tenth of the API's CPU on one-trade webhooks when made per unit of work.
_session_factories: dict[tuple[str, bool], sessionmaker[Session]] = {}


def sqlalchemy_url(url: str) -> str:
    """Pin the psycopg2 driver: SQLAlchemy 2.1 maps a bare postgresql:// URL to psycopg 3."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def engine_for(url: str, *, autocommit: bool = False) -> Engine:
    """One engine per URL, mode and process (re-created after a fork by ``dispose_engines``).

    ``autocommit``: each statement is its own transaction, committed (and flushed to disk) by
    the time it returns: no BEGIN and COMMIT round trips, for work that is one statement.
    """
    engine = _engines.get((url, autocommit))
    if engine is None:
        connect_args = {"connect_timeout": 5, "application_name": "dustpan"}
        if autocommit:
            engine = create_engine(
                sqlalchemy_url(url),
                isolation_level="AUTOCOMMIT",
                pool_size=2,
                max_overflow=2,
                connect_args=connect_args,
            )
            _ping_when_idle(engine)
        else:
            engine = create_engine(sqlalchemy_url(url), pool_size=5, max_overflow=5, connect_args=connect_args)
            _ping_when_idle(engine)
        _engines[(url, autocommit)] = engine
    return engine


def _ping_when_idle(engine: Engine) -> None:
    @event.listens_for(engine, "checkin")
    def _idle_from_now(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            # The dialect's own ping: with autocommit on for the SELECT 1, so that it leaves no
            # transaction open on a transactional connection (a SET TRANSACTION must come first).
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError("stale pooled connection") from exc  # the pool connects anew


def dispose_engines() -> None:
    """Drop pooled connections inherited from a parent process (Celery prefork children)."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _session_factories.clear()


def session_factory(url: str, *, autocommit: bool = False) -> sessionmaker[Session]:
    factory = _session_factories.get((url, autocommit))
    if factory is None:
        engine = engine_for(url, autocommit=autocommit)
        factory = _session_factories[(url, autocommit)] = sessionmaker(bind=engine, expire_on_commit=False)
    return factory


class UnitOfWork:
    """One transaction: ``with uow:`` opens it, ``commit()`` ends it; leaving without commit rolls back.

    With ``autocommit`` every statement commits as it returns and ``commit()`` has nothing left
    to do: only for work whose statements need not be atomic together (one write, say).
    """

    def __init__(self, url: str, *, autocommit: bool = False) -> None:
        self.url = url
        self._factory = session_factory(url, autocommit=autocommit)
        self._autocommit = autocommit
        self._session: Session | None = None
        self._pooled: PoolProxiedConnection | None = None  # autocommit rows() without a session

    def another(self) -> UnitOfWork:
        """A unit of work of its own on the same database (one per thread: a session is not shared)."""
        return UnitOfWork(self.url, autocommit=self._autocommit)

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self._factory()
        return self._session

    def rows(self, statement: str, parameters: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run one driver-level statement (psycopg2 ``%(name)s`` parameters), return its rows.

        In the unit of work's transaction, or with ``autocommit`` committed as it returns: then
        straight on a pooled DBAPI connection, for a hot path where the ORM session's
        bookkeeping costs more than the statement. Errors are SQLAlchemy's, as anywhere else.
        """
        if self._session is not None or not self._autocommit:
            result = self.session.connection().exec_driver_sql(statement, parameters)
            return [tuple(row) for row in result] if result.returns_rows else []
        engine = self._factory.kw["bind"]
        dbapi_error = engine.dialect.loaded_dbapi.Error
        if self._pooled is None:
            try:
                self._pooled = engine.raw_connection()
            except dbapi_error as exc:  # the pool hands the driver's own error through: wrap it too
                raise DBAPIError.instance(None, None, exc, dbapi_error) from exc
        cursor = self._pooled.cursor()
        try:
            cursor.execute(statement, parameters)
            return list(cursor.fetchall()) if cursor.description else []
        except dbapi_error as exc:
            gone = engine.dialect.is_disconnect(exc, self._pooled, cursor)
            if gone:
                self._pooled.invalidate(exc)  # closed, never handed out again
            raise DBAPIError.instance(statement, parameters, exc, dbapi_error, connection_invalidated=gone) from exc
        finally:
            if not cursor.closed:
                cursor.close()

    def __enter__(self) -> UnitOfWork:
        # An autocommit unit of work makes its session on first use: rows() alone never pays for it.
        self._session = None if self._autocommit else self._factory()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pooled is not None:
            self._pooled.close()  # back to the pool
            self._pooled = None
        if self._session is not None:
            # close() rolls back whatever was not committed; loaded objects stay readable.
            self._session.close()

    def commit(self) -> None:
        if self._session is not None:
            self._session.commit()
