"""The API's log (SPEC section 3), read from a real API process after a few requests: a startup
line, one access line per request in the workers' JSON format, a request id answered in a
header and carried to the worker's lines for the task the request caused; never a secret."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books
from tests.support.fleet import DustpanProcess, Fleet, free_port, wait_for
from workers.webhook import sign

pytestmark = pytest.mark.integration
CALLER_ID = "upstream-delivery-42"


def json_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def post_signed(client: httpx.Client, trades: list[dict[str, str]], headers: dict[str, str]) -> httpx.Response:
    body = json.dumps({"trades": trades}).encode()
    timestamp = str(int(time.time()))
    signed = {"X-Dustpan-Timestamp": timestamp, "X-Dustpan-Signature": sign(WEBHOOK_SECRET, timestamp, body)}
    return client.post("/webhooks/trades", content=body, headers={**signed, **headers})


def trade(n: int, symbol: str) -> dict[str, str]:
    return {
        "id": f"req-{symbol}-{n}",
        "symbol": symbol,
        "side": "buy",
        "quantity": "0.75",
        "price": "100.00",
        "executed_at": f"2026-11-02T14:30:0{n}+00:00",
    }


def test_api_logs_startup_and_access_lines_and_the_request_id_reaches_the_worker(
    make_fleet: Callable[..., Fleet], books: Books
) -> None:
    fleet = make_fleet(DUSTPAN_ACCUMULATION__THRESHOLD="1")
    fleet.start_api()
    worker = fleet.start_worker()
    assert fleet.api is not None
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        given = post_signed(client, [trade(0, "AAPL"), trade(1, "AAPL")], {"X-Request-ID": CALLER_ID})
        generated = post_signed(client, [trade(0, "MSFT")], {"X-Request-ID": "not a token\t!"})
        read = client.get("/accumulators", headers={"Authorization": f"Bearer {API_TOKEN}"})
        refused = client.get("/accumulators", headers={"Authorization": "Bearer wrong-guess"})
    assert (given.status_code, generated.status_code, read.status_code, refused.status_code) == (202, 202, 200, 401)
    assert given.headers["x-request-id"] == CALLER_ID
    made_up = generated.headers["x-request-id"]
    assert made_up and made_up != CALLER_ID and " " not in made_up

    wait_for(books.drained, 60, "the trades to be accumulated and the BUY 1 of AAPL to settle")
    log_text = fleet.api.log_path.read_text()
    lines = json_lines(fleet.api.log_path)
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    [startup] = [line for line in lines if "API listening on" in str(line["message"])]
    assert f"http://127.0.0.1:{fleet.api_port}" in str(startup["message"])
    assert "dustpan 0." in str(startup["message"]) and "database postgresql://" in str(startup["message"])

    access = [line for line in lines if line["logger"] == "dustpan.access"]
    by_id = {line["request_id"]: line for line in access}
    assert by_id[CALLER_ID]["method"] == "POST" and by_id[CALLER_ID]["path"] == "/webhooks/trades"
    assert by_id[CALLER_ID]["status"] == 202 and float(str(by_id[CALLER_ID]["duration_ms"])) >= 0
    assert by_id[made_up]["status"] == 202
    assert read.headers["x-request-id"] in by_id and refused.headers["x-request-id"] in by_id
    assert by_id[refused.headers["x-request-id"]]["status"] == 401
    for secret in (API_TOKEN, WEBHOOK_SECRET, "wrong-guess", "X-Dustpan-Signature", "v1="):
        assert secret not in log_text, secret

    def worker_lines_of(request_id: str) -> list[dict[str, object]]:
        return [line for line in json_lines(worker.log_path) if line.get("request_id") == request_id]

    wait_for(lambda: bool(worker_lines_of(CALLER_ID)), 30, "the worker to log a line of the AAPL request")
    caused = worker_lines_of(CALLER_ID)
    assert {line.get("task_name") for line in caused} >= {"ingestion.accumulate"}
    assert all(line.get("symbol") in (None, "AAPL") for line in caused), caused
    # The order the accumulation created was enqueued from that task: it carries the id on.
    wait_for(
        lambda: any(line.get("task_name") == "execution.submit" for line in worker_lines_of(CALLER_ID)),
        30,
        "the submit of the AAPL order to carry the request id",
    )


def test_liveness_is_separate_from_readiness(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(
        DUSTPAN_BROKERAGE="alpaca",
        DUSTPAN_ALPACA_TRADING_URL=f"http://127.0.0.1:{free_port()}",  # closed: the brokerage is down
        DUSTPAN_ALPACA_KEY_ID="key",
        DUSTPAN_ALPACA_SECRET_KEY="secret",
    )
    # Not start_api(): it waits for /health, which a brokerage outage keeps at 503.
    fleet.api = DustpanProcess("api", ["api", "--port", str(fleet.api_port)], fleet.env, fleet.log_dir).start()
    wait_for(lambda: _status(fleet.api_url, "/health/live") == 200, 60, "the API to be live")
    # The brokerage is unreachable: /health says so, but the API is live and ready for webhooks.
    assert _status(fleet.api_url, "/health") == 503
    assert _status(fleet.api_url, "/health/ready") == 200


def _status(base_url: str, path: str) -> int:
    try:
        return httpx.get(f"{base_url}{path}", timeout=5).status_code
    except httpx.HTTPError:
        return 0
