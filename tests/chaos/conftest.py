"""Chaos runs own their PostgreSQL and Redis: the harness kills and restarts them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.embedded import EmbeddedPostgres, EmbeddedRedis


@pytest.fixture
def chaos_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    # fsync off: `-m immediate` kills the server, not the machine, so the WAL in the page
    # cache survives and crash recovery is exercised all the same.
    postgres = EmbeddedPostgres(tmp_path / "pg", fsync=False)
    postgres.start()
    yield postgres
    postgres.stop()


@pytest.fixture
def chaos_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    redis = EmbeddedRedis(tmp_path / "redis", persist=True)  # AOF, as the compose file runs it
    redis.start()
    yield redis
    redis.stop()
