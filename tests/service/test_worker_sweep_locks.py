"""The worker sweep holds its advisory lock on a connection that touches no table, so DDL
queued while it sweeps (a TRUNCATE, a migration's ALTER TABLE) never waits behind it while the
sweep's own statements wait behind that DDL: a stall PostgreSQL's deadlock detector cannot see."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import psycopg2
import pytest

from models.db import UnitOfWork
from workers import worker_sweep
from workers.worker_sweep import WorkerSweep


def test_ddl_on_job_runs_is_not_blocked_while_a_worker_sweeps(
    clean_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ddl: list[str] = []

    def rewake_meeting_ddl(_deps: object) -> dict[str, int]:
        # Another session takes the strongest lock on the table the guard reads, as TRUNCATE does.
        connection = psycopg2.connect(clean_database)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '2s'")
                cursor.execute("LOCK TABLE job_runs IN ACCESS EXCLUSIVE MODE")
                ddl.append("locked")
        finally:
            connection.rollback()
            connection.close()
        return {}

    monkeypatch.setattr(worker_sweep, "rewake_once", rewake_meeting_ddl)
    deps = SimpleNamespace(unit_of_work=lambda: UnitOfWork(clean_database), now=lambda: datetime.now(UTC))

    assert WorkerSweep(deps, Decimal(5)).sweep_once()  # type: ignore[arg-type]
    assert ddl == ["locked"]
