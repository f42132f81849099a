"""Scheduled job runs recorded in PostgreSQL: what each Beat tick did, once per tick."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, update

from models.db import UnitOfWork
from models.tables_ops import JobRun

RETENTION = timedelta(days=7)


def start_run(uow: UnitOfWork, job: str, now: datetime) -> int:
    with uow:
        # Keep a week per job; a sweep every 5 s would otherwise grow the table without end.
        uow.session.execute(delete(JobRun).where(JobRun.job == job, JobRun.started_at < now - RETENTION))
        run_id = uow.session.scalar(insert(JobRun).values(job=job, started_at=now).returning(JobRun.id))
        uow.commit()
    assert run_id is not None
    return run_id


def finish_run(uow: UnitOfWork, run_id: int, outcome: str, summary: Any, now: datetime) -> None:
    with uow:
        uow.session.execute(
            update(JobRun)
            .where(JobRun.id == run_id)
            .values(finished_at=now, outcome=outcome, summary=json.dumps(summary, default=str)[:20_000])
        )
        uow.commit()
