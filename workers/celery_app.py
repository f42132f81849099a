"""The Celery application: configured from celeryconfig, one engine per worker process."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import task_failure, task_retry, worker_process_init

from models.db import dispose_engines
from workers import metrics

app = Celery(
    "dustpan",
    include=[
        "tasks.ingestion_tasks",
        "tasks.execution_tasks",
        "tasks.sweeps",
        "tasks.audit",
        "tasks.cleanup",
        "tasks.balances_tasks",
        "tasks.prices_tasks",
        "tasks.dust_tasks",
    ],
)
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # Pooled connections inherited from the parent must never be shared with a forked child.
    dispose_engines()


# Fleet-wide counters in Redis; the handlers log instead of raising into the task.
task_failure.connect(metrics.count_task_failure)
task_retry.connect(metrics.count_task_retry)
