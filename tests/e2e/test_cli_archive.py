"""`dustpan archive` as an operator runs it: a dry run by default, --execute moves, the audit stays ok."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg2
import pytest

from models.db import UnitOfWork
from tasks.audit_verifier import run_pass
from tests.e2e.test_cli import clean_env, dustpan, workdir  # noqa: F401 - workdir is a fixture
from tests.service.test_incremental_audit import NOW, history


@pytest.fixture
def archive_env(clean_database: str, broker_url: str) -> dict[str, str]:
    return clean_env(DUSTPAN_DATABASE_URL=clean_database, DUSTPAN_BROKER_URL=broker_url)


def count(url: str, table: str) -> int:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table}")
            return int(cursor.fetchone()[0])  # type: ignore[index]
    finally:
        connection.close()


def test_archive_is_a_dry_run_until_execute_and_the_audit_stays_ok(
    workdir: Path,  # noqa: F811 - the fixture
    archive_env: dict[str, str],
    clean_database: str,
) -> None:
    uow = UnitOfWork(clean_database)
    history(uow)
    connection = psycopg2.connect(clean_database)
    with connection, connection.cursor() as cursor:
        cursor.execute("UPDATE trades SET received_at = '2025-01-15T12:00:00Z'")
    connection.close()
    run_pass(uow, NOW)
    before = json.loads(dustpan("audit", "--json", env=archive_env, cwd=workdir).stdout)

    dry = dustpan("archive", "--before", "2025-02", "--json", env=archive_env, cwd=workdir)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert json.loads(dry.stdout)["executed"] is False and json.loads(dry.stdout)["trades"] == 4
    assert count(clean_database, "archived_trades") == 0

    done = dustpan("archive", "--before", "2025-02", "--execute", env=archive_env, cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 trades received before 2025-02 moved" in done.stdout
    assert count(clean_database, "archived_trades") == 4

    after = dustpan("audit", "--json", env=archive_env, cwd=workdir)
    assert after.returncode == 0, after.stdout + after.stderr
    assert json.loads(after.stdout) == before


def test_archive_with_a_month_that_is_not_one_is_bad_usage(workdir: Path, archive_env: dict[str, str]) -> None:  # noqa: F811
    done = dustpan("archive", "--before", "2025-13", env=archive_env, cwd=workdir)
    assert done.returncode == 2
    assert "is not a month" in done.stderr
