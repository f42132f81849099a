"""Fleet fixtures: real API, Celery workers and Beat processes on the test's PostgreSQL and Redis."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.support.fleet import Fleet
from workers.embedded import EmbeddedRedis

WEBHOOK_SECRET = "integration-webhook-secret"
API_TOKEN = "integration-api-token"
OPERATOR_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def fleet_env(database_url: str, broker_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(
        {
            "DUSTPAN_DATABASE_URL": database_url,
            "DUSTPAN_BROKER_URL": broker_url,
            "DUSTPAN_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DUSTPAN_API_TOKEN": API_TOKEN,
            "DUSTPAN_DATA_DIR": str(data_dir),
            "DUSTPAN_SCHEDULE__SWEEP_SECONDS": "1",
            "DUSTPAN_EXECUTION__PENDING_STALE_SECONDS": "3",
            "DUSTPAN_EXECUTION__SUBMITTED_STALE_SECONDS": "5",
            "DUSTPAN_EXECUTION__POLL_SECONDS": "1",
        }
    )
    env.update(overrides)
    return env


def alpaca_fleet_env(database_url: str, broker_url: str, data_dir: Path, stub: Any, **overrides: str) -> dict[str, str]:
    """A fleet that speaks Alpaca's wire format to a local stub (tests/support/alpaca_stub.py)."""
    return fleet_env(
        database_url,
        broker_url,
        data_dir,
        DUSTPAN_BROKERAGE="alpaca",
        DUSTPAN_ALPACA_TRADING_URL=stub.url,
        DUSTPAN_ALPACA_DATA_URL=stub.url,
        DUSTPAN_ALPACA_KEY_ID=stub.key_id,
        DUSTPAN_ALPACA_SECRET_KEY=stub.secret_key,
        **overrides,
    )


@pytest.fixture
def make_fleet(clean_database: str, broker_url: str, tmp_path: Path, log_dir: Path) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def make(**overrides: str) -> Fleet:
        fleet = Fleet(fleet_env(clean_database, broker_url, tmp_path / "data", **overrides), log_dir)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


class Books:
    """Read-only SQL over the test database, for assertions."""

    def __init__(self, url: str) -> None:
        self.url = url

    def rows(self, query: str, *args: object) -> list[tuple[object, ...]]:
        connection = psycopg2.connect(self.url)
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, args)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def value(self, query: str, *args: object) -> object:
        return self.rows(query, *args)[0][0]

    def drained(self) -> bool:
        return (
            self.value(
                "SELECT (SELECT count(*) FROM trades WHERE status = 'received')"
                " + (SELECT count(*) FROM executions WHERE status IN ('pending', 'submitted'))"
            )
            == 0
        )


@pytest.fixture
def books(clean_database: str) -> Books:
    return Books(clean_database)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own, with AOF as the compose file runs it: the session's shared one is never killed."""
    server = EmbeddedRedis(tmp_path / "own-redis", persist=True)
    server.start()
    yield server
    server.stop()
