"""Logs for `dustpan api|worker|beat|flower`: one JSON object a line (DUSTPAN_LOG_FORMAT=json) or text.

Every line carries time, level, logger and message, plus whichever of ``task_name``,
``task_id``, ``symbol``, ``execution_id`` and ``trade_ids`` apply. They come from, in order:
the log call's ``extra=``, the fields bound with ``tasks.log_context.log_context`` by the task wrappers,
and Celery's current task (or, for the worker's own "received"/"succeeded" lines, the task
data Celery attaches to the record). Celery is kept off the root logger by answering its
``setup_logging`` signal (workers/celery_app.py), so it never replaces these handlers.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

from celery._state import get_current_task  # what Celery's own TaskFormatter reads

from tasks.log_context import bound_fields

FIELDS = ("task_name", "task_id", "symbol", "execution_id", "trade_ids", "request_id")
# The API's access lines carry these too (given with ``extra=``).
ACCESS_FIELDS = ("method", "path", "status", "duration_ms")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def current_request_id() -> str | None:
    """The id of the API request being served, or of the request that caused the running task."""
    bound = bound_fields().get("request_id")
    if bound:
        return str(bound)
    task = get_current_task()
    carried = getattr(task.request, "request_id", None) if task is not None else None
    return str(carried) if carried else None


def context_fields(record: logging.LogRecord) -> dict[str, Any]:
    bound = bound_fields()
    task = get_current_task()
    celery_data = getattr(record, "data", None)
    celery_data = celery_data if isinstance(celery_data, dict) else {}
    fallbacks = {
        "task_name": task.name if task is not None else celery_data.get("name"),
        "task_id": task.request.id if task is not None else celery_data.get("id"),
        # Carried in the task message's headers from the API request that enqueued it.
        "request_id": getattr(task.request, "request_id", None) if task is not None else None,
    }
    fields = {}
    for name in (*FIELDS, *ACCESS_FIELDS):
        value = getattr(record, name, None)
        if value is None:
            value = bound.get(name, fallbacks.get(name))
        if value is not None:
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **context_fields(record),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{name}={value}" for name, value in context_fields(record).items())
        return f"{super().formatMessage(record)} [{fields}]" if fields else super().formatMessage(record)


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict; uvicorn applies it in each of its worker processes too."""
    formatter = "workers.logging_setup.JsonFormatter" if log_format == "json" else "workers.logging_setup.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"dustpan": {"()": formatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "dustpan", "stream": "ext://sys.stderr"}
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's loggers otherwise keep handlers of their own and print plain text.
            **{name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error")},
            # httpx logs every request at INFO: a line per broker call, said again by the outcome's
            # own line (execution.submit's, settlement's). Its requests show at DEBUG.
            "httpx": {"level": level if level.upper() == "DEBUG" else "WARNING"},
        },
    }


def configure(log_format: str, level: str) -> None:
    logging.config.dictConfig(logging_config(log_format, level))
    logging.captureWarnings(True)
