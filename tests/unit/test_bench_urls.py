"""The bench scripts derive a fresh database's URL from the admin URL by parsing it (SQLAlchemy's
make_url), not by string surgery, so Unix-socket URLs and odd passwords keep working."""

from __future__ import annotations

import pytest
from psycopg2.extensions import parse_dsn

from bench._servers import database_name, database_url_for


@pytest.mark.parametrize(
    ("admin_url", "expected"),
    [
        pytest.param(
            "postgresql://u@/postgres?host=/run/postgresql",
            {"user": "u", "dbname": "bench_1", "host": "/run/postgresql"},
            id="unix socket",
        ),
        pytest.param(
            "postgresql://u:p%2Fq@127.0.0.1:5433/postgres",
            {"user": "u", "password": "p/q", "dbname": "bench_1", "host": "127.0.0.1", "port": "5433"},
            id="password with a slash",
        ),
        pytest.param(
            "postgresql://u@127.0.0.1/postgres?sslmode=disable",
            {"user": "u", "dbname": "bench_1", "host": "127.0.0.1", "sslmode": "disable"},
            id="query kept",
        ),
    ],
)
def test_database_url_for_changes_only_the_database(admin_url: str, expected: dict[str, str]) -> None:
    url = database_url_for(admin_url, "bench_1")
    assert parse_dsn(url) == expected  # what libpq, and so psycopg2, will connect to
    assert database_name(url) == "bench_1"


def test_a_url_without_a_database_is_refused() -> None:
    with pytest.raises(ValueError, match="names no database"):
        database_name("postgresql://u@/?host=/tmp")
