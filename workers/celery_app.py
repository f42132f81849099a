"""The Celery application: configured from celeryconfig, one engine per worker process."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from models.db import dispose_engines

app = Celery("dustpan", include=["tasks.ingestion_tasks", "tasks.execution_tasks", "tasks.sweeps", "tasks.audit"])
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # Pooled connections inherited from the parent must never be shared with a forked child.
    dispose_engines()
