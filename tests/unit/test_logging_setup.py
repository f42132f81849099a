"""The log line format of `dustpan api|worker|beat`: one JSON object per line, with task context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from celery import Celery

from tasks.log_context import log_context
from workers.logging_setup import JsonFormatter, TextFormatter


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("dustpan.unit.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_inside_a_celery_task_carries_task_name_task_id_symbol_execution_id_and_trade_ids(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    app = Celery("logging-unit", set_as_current=False)

    @app.task(name="execution.submit", bind=True)
    def submit(self: object, execution_id: str) -> None:
        with log_context(execution_id=execution_id):
            logger.info("order %s placed", "o-1", extra={"symbol": "AAPL", "trade_ids": ["t-1", "t-2"]})

    submit.apply(args=["e-42"], task_id="task-7")

    [line] = lines(stream)
    assert line["message"] == "order o-1 placed"
    assert line["level"] == "INFO"
    assert line["logger"] == "dustpan.unit.logging"
    assert str(line["time"]).endswith("+00:00")
    assert line["task_name"] == "execution.submit"
    assert line["task_id"] == "task-7"
    assert line["symbol"] == "AAPL"
    assert line["execution_id"] == "e-42"
    assert line["trade_ids"] == ["t-1", "t-2"]


def test_a_line_outside_any_task_has_only_the_four_base_fields(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    with log_context(symbol="MSFT"):
        logger.warning("inside")
    logger.warning("outside %d", 1)
    inside, outside = lines(stream)
    assert inside["symbol"] == "MSFT"
    assert set(outside) == {"time", "level", "logger", "message"}
    assert outside["message"] == "outside 1"


def test_the_workers_own_task_lines_take_the_task_from_celerys_record_data(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    data = {"id": "task-9", "name": "ingestion.accumulate"}
    logger.info("Task %(name)s[%(id)s] received", data, extra={"data": data})
    [line] = lines(stream)
    assert line["message"] == "Task ingestion.accumulate[task-9] received"
    assert (line["task_name"], line["task_id"]) == ("ingestion.accumulate", "task-9")


def test_an_exception_stays_on_one_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logger.exception("failed")
    assert len(stream.getvalue().splitlines()) == 1
    assert "ValueError: bad\nthing" in str(lines(stream)[0]["exc_info"])


def test_the_text_format_appends_the_context_fields() -> None:
    record = logging.LogRecord("dustpan.x", logging.INFO, __file__, 1, "accumulated %d trades", (3,), None)
    record.symbol = "AAPL"
    assert TextFormatter().format(record).endswith("INFO dustpan.x: accumulated 3 trades [symbol=AAPL]")
