"""Which errors a task retries as "a dependency is away" (tasks.outages)."""

from __future__ import annotations

import psycopg2
import pytest
import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from tasks.outages import OUTAGE_RETRY_CAP_SECONDS, dependency_away, outage_retry_delay
from tasks.ports import TemporaryError

BROKER_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def _raised_from(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as caught:
        return caught


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("SELECT 1", {}, psycopg2.OperationalError("server closed the connection unexpectedly")),
        InterfaceError("SELECT 1", {}, psycopg2.InterfaceError("connection already closed")),
        DBAPIError("SELECT 1", {}, Exception("terminating connection"), connection_invalidated=True),
    ],
)
def test_database_connection_errors_are_postgresql_away(exc: Exception) -> None:
    assert dependency_away(exc, BROKER_ERRORS) == "PostgreSQL"


@pytest.mark.parametrize(
    "exc",
    [
        redis.ConnectionError("Error 111 connecting"),
        redis.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.TimeoutError("Timeout reading from socket"),
        KombuOperationalError("Error 111 connecting to 127.0.0.1:6379"),
    ],
)
def test_broker_connection_errors_are_redis_away(exc: Exception) -> None:
    assert dependency_away(exc, BROKER_ERRORS) == "Redis"


def test_an_error_raised_from_an_outage_is_the_outage() -> None:
    lost = OperationalError("SELECT 1", {}, psycopg2.OperationalError("connection refused"))
    assert dependency_away(_raised_from(RuntimeError("while claiming"), lost)) == "PostgreSQL"


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad quantity"),
        IntegrityError("INSERT", {}, psycopg2.IntegrityError("duplicate key")),
        DBAPIError("SELECT 1", {}, Exception("syntax error"), connection_invalidated=False),
        TemporaryError("broker 503"),
        redis.ResponseError("WRONGTYPE"),
    ],
)
def test_the_tasks_own_errors_are_no_outage(exc: Exception) -> None:
    assert dependency_away(exc, BROKER_ERRORS) is None


def test_redis_errors_count_only_when_the_composition_root_names_them() -> None:
    assert dependency_away(redis.ConnectionError("gone")) is None


def test_retry_delays_grow_with_jitter_and_stay_under_both_caps() -> None:
    delays = {retries: [outage_retry_delay(retries, cap=60) for _ in range(200)] for retries in range(8)}
    assert max(delays[0]) <= 2
    assert all(1 <= d <= OUTAGE_RETRY_CAP_SECONDS for ds in delays.values() for d in ds)
    assert len(set(delays[7])) > 3, "jittered"
    assert max(outage_retry_delay(9, cap=3) for _ in range(100)) <= 3
