"""Servers for a bench: PostgreSQL (and Redis) given by URL, or embedded ones in a temp dir."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2 import sql
from sqlalchemy.engine import make_url

from models.db import dispose_engines


@contextmanager
def postgres_server(database_url: str | None) -> Iterator[str]:
    """Yield an admin URL (a server where the bench may create databases); stop what it started."""
    with tempfile.TemporaryDirectory(prefix="dustpan-bench-") as tmp:
        server = None
        if not database_url:
            from workers.embedded import EmbeddedPostgres

            server = EmbeddedPostgres(Path(tmp))
            server.start()
            database_url = server.url
        try:
            yield database_url
        finally:
            dispose_engines()
            if server is not None:
                server.stop()


@dataclass
class Services:
    database_url: str  # a database of the bench's own, migrated to head
    broker_url: str
    durability: str
    server_pids: dict[str, int]  # embedded servers only: their CPU is reported too


@contextmanager
def fleet_services(
    scratch: Path, database_url: str | None, broker_url: str | None, fsync: bool = True
) -> Iterator[Services]:
    """A fresh database (dropped at the end) on the given or an embedded PostgreSQL, and a Redis."""
    from workers.cli import migrate

    pids: dict[str, int] = {}
    with ExitStack() as stack:
        admin_url = database_url
        if not admin_url:
            from workers.embedded import EmbeddedPostgres

            postgres = EmbeddedPostgres(scratch / "pg", fsync=fsync)
            stack.callback(postgres.stop)
            postgres.start()
            admin_url = postgres.url
            pids["postgres"] = postgres.pid or 0
        if not broker_url:
            from workers.embedded import EmbeddedRedis

            redis_server = EmbeddedRedis(scratch / "redis", persist=True)
            stack.callback(redis_server.stop)
            redis_server.start()
            broker_url = redis_server.url
            pids["redis"] = redis_server.pid or 0
        url = create_database(admin_url, f"dustpan_bench_{uuid.uuid4().hex[:8]}")
        stack.callback(drop_database, admin_url, url)
        migrate(url)
        yield Services(url, broker_url, _durability(url, embedded=not database_url), pids)


def fleet_env(found: Services, data_dir: Path, webhook_secret: str, api_token: str) -> dict[str, str]:
    """The bench's environment without any DUSTPAN_ setting of the caller's, plus the fleet's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(
        {
            "DUSTPAN_DATABASE_URL": found.database_url,
            "DUSTPAN_BROKER_URL": found.broker_url,
            "DUSTPAN_WEBHOOK_SECRET": webhook_secret,
            "DUSTPAN_API_TOKEN": api_token,
            "DUSTPAN_DATA_DIR": str(data_dir),
        }
    )
    return env


def _admin_run(admin_url: str, statement: sql.Composable) -> None:
    connection = psycopg2.connect(admin_url)
    connection.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def database_url_for(admin_url: str, name: str) -> str:
    """The admin URL with another database: parsed, so that a Unix-socket URL
    (``postgresql://u@/postgres?host=/run/postgresql``) or a password with a ``/`` keeps working."""
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def database_name(url: str) -> str:
    name = make_url(url).database
    if not name:
        raise ValueError("the database URL names no database")
    return name


def create_database(admin_url: str, name: str) -> str:
    _admin_run(admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url_for(admin_url, name)


def drop_database(admin_url: str, database_url: str) -> None:
    dispose_engines()
    name = sql.Identifier(database_name(database_url))
    _admin_run(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def _durability(database_url: str, embedded: bool) -> str:
    connection = psycopg2.connect(database_url)
    try:
        with connection.cursor() as cursor:
            settings = []
            for name in ("fsync", "synchronous_commit", "full_page_writes"):
                cursor.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
                settings.append(f"{name}={cursor.fetchone()[0]}")
    finally:
        connection.close()
    return f"{'embedded' if embedded else 'given server'}, {', '.join(settings)}"
