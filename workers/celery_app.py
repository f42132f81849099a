"""The Celery application: configured from celeryconfig, one engine per worker process."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_failure,
    task_retry,
    task_success,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

import workers.celery_patches  # noqa: F401 - guards kombu's Redis channel before any connection (see there)
from models.db import dispose_engines
from workers import logging_setup, metrics, runtime
from workers.enqueue import RedisEnqueue
from workers.settings import get_settings

# Every task lives in a tasks/*_tasks.py module of its family (tests/unit/test_task_modules.py).
TASK_MODULES = [
    "tasks.ingestion_tasks",
    "tasks.execution_tasks",
    "tasks.sweep_tasks",
    "tasks.audit_tasks",
    "tasks.balances_tasks",
    "tasks.prices_tasks",
    "tasks.dust_tasks",
    "tasks.venues_tasks",
    "tasks.positions_tasks",
]
app = Celery("dustpan", include=TASK_MODULES)
app.config_from_object("celeryconfig")
# Follow-up work leaves every process through this one after-commit enqueue (tasks.ports.Enqueue).
enqueue = RedisEnqueue(runtime.redis_client, app.send_task, dict(get_settings().accumulation.queues))
# The tasks reach unit of work, brokerage, clock, enqueue, settings and the trade latency
# histograms (fleet-wide, in Redis: workers.metrics) through this (tasks.deps).
app.dependencies = runtime.dependencies(enqueue, metrics.RedisLatencies())


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


@before_task_publish.connect
def _carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # The request (or the task) that enqueues this one: its id reaches the worker's log lines,
    # so an operator can follow one webhook from the API's access line to the order it caused.
    request_id = logging_setup.current_request_id()
    if request_id and headers is not None:
        headers.setdefault("request_id", request_id)


# Fleet-wide counters in Redis; the handlers log instead of raising into the task.
task_success.connect(metrics.count_task_success)
task_failure.connect(metrics.count_task_failure)
task_retry.connect(metrics.count_task_retry)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _write_task_metrics(**_: Any) -> None:
    # Counted in the process, written every half second: what is left goes out before it exits.
    metrics.TASK_METRICS.flush()
