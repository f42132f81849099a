"""Scheduled job runs recorded in PostgreSQL: what each Beat tick did, once per tick."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import delete, insert, update

from models.db import UnitOfWork
from models.tables_ops import JobRun

P = ParamSpec("P")
R = TypeVar("R")


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


def recorded(job: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record a scheduled job's run (started, finished, outcome, summary) around its body."""

    def decorate(body: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(body)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            from workers import runtime

            run_id = start_run(runtime.unit_of_work(), job, runtime.now())
            try:
                result = body(*args, **kwargs)
            except BaseException as exc:
                finish_run(runtime.unit_of_work(), run_id, "failed", {"error": repr(exc)}, runtime.now())
                raise
            finish_run(runtime.unit_of_work(), run_id, "ok", result, runtime.now())
            return result

        return run

    return decorate
