"""The Celery application: configured from celeryconfig, one engine per worker process."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_failure, task_retry, task_success, worker_process_init

import workers.celery_patches  # noqa: F401 - guards kombu's Redis channel before any connection (see there)
from models.db import dispose_engines
from workers import logging_setup, metrics
from workers.settings import get_settings

app = Celery(
    "dustpan",
    include=[
        "tasks.ingestion_tasks",
        "tasks.execution_tasks",
        "tasks.sweeps",
        "tasks.audit_tasks",
        "tasks.cleanup",
        "tasks.balances_tasks",
        "tasks.prices_tasks",
        "tasks.dust_tasks",
    ],
)
app.config_from_object("celeryconfig")


@setup_logging.connect
def _dustpan_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Answering this signal keeps Celery from replacing the root logger's handlers with its own
    # (worker_hijack_root_logger); worker and Beat log through ours, JSON unless DUSTPAN_LOG_FORMAT=text.
    settings = get_settings()
    level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else (loglevel or settings.log_level)
    logging_setup.configure(settings.log_format, str(level))


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    # Pooled connections inherited from the parent must never be shared with a forked child.
    dispose_engines()


# Fleet-wide counters in Redis; the handlers log instead of raising into the task.
task_success.connect(metrics.count_task_success)
task_failure.connect(metrics.count_task_failure)
task_retry.connect(metrics.count_task_retry)
