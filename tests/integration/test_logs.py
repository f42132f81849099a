"""A real worker's and API's log files: one JSON object per line, task lines carry the task."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.integration.conftest import WEBHOOK_SECRET, Books
from tests.support.feed import post_trades
from tests.support.fleet import DustpanProcess, Fleet, wait_for

pytestmark = pytest.mark.integration


def json_lines(process: DustpanProcess) -> list[dict[str, object]]:
    text = process.log_path.read_text()
    assert text.strip(), f"{process.name} logged nothing"
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_worker_log_lines_are_json_and_name_the_task_symbol_and_trades(
    make_fleet: Callable[..., Fleet], books: Books
) -> None:
    fleet = make_fleet(DUSTPAN_ACCUMULATION__THRESHOLD="1")
    fleet.start_api()
    worker = fleet.start_worker()
    trades = [
        {
            "id": f"log-{n}",
            "symbol": "AAPL",
            "side": "buy",
            "quantity": "0.6",
            "price": "231.40",
            "executed_at": f"2026-11-02T14:30:0{n}+00:00",
        }
        for n in range(2)
    ]
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        post_trades(client, WEBHOOK_SECRET, trades)
    wait_for(books.drained, 60, "the trades to be accumulated and the BUY 1 to settle")
    execution_id = str(books.value("SELECT id FROM executions"))
    wait_for(
        lambda: any(line.get("task_name") == "execution.submit" for line in json_lines(worker)),
        30,
        "the worker to log the submit",
    )

    lines = json_lines(worker)  # every line parses, or json.loads raises here
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    [accumulated] = [line for line in lines if line["message"] == "accumulated 2 trades"]
    assert accumulated["task_name"] == "ingestion.accumulate"
    assert accumulated["task_id"]
    assert accumulated["symbol"] == "AAPL"
    assert accumulated["trade_ids"] == ["log-0", "log-1"]
    submitted = [line for line in lines if line.get("execution_id") == execution_id]
    assert {line.get("task_name") for line in submitted} >= {"ingestion.accumulate", "execution.submit"}
    # The broker's answer is logged where it is recorded (tasks/settlement.py).
    assert any(line.get("symbol") == "AAPL" and line["logger"] == "tasks.settlement" for line in submitted)
    received = [line for line in lines if str(line["message"]).endswith("received")]
    assert received and all(line["task_id"] and line["task_name"] for line in received)
