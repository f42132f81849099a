"""`dustpan flower` against a real worker: it sees dustpan's tasks, and only operators see it.

Workers start with task events off (``celery.task_events``): Flower's own ``enable_events``
broadcast turns them on, so the first test also proves that path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import WEBHOOK_SECRET
from tests.support.feed import post_trades
from tests.support.fleet import REPO, DustpanProcess, Fleet, free_port, wait_for

pytestmark = pytest.mark.integration

FLOWER_USER, FLOWER_PASSWORD = "operator", "flower-test-password"
CREDENTIALS = {"DUSTPAN_FLOWER_USER": FLOWER_USER, "DUSTPAN_FLOWER_PASSWORD": FLOWER_PASSWORD}
PROTECTED = ("/", "/api/tasks", "/api/workers", "/metrics")
SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "META", "GOOG", "ORCL", "INTC", "AMD", "IBM", "SAP")


def trade(trade_id: str, symbol: str) -> dict[str, str]:
    return {
        "id": trade_id,
        "symbol": symbol,
        "side": "buy",
        "quantity": "0.5",
        "price": "231.40",
        "executed_at": "2026-11-02T14:30:00.000001+00:00",
    }


def start_flower(fleet: Fleet, log_dir: Path, *args: str) -> str:
    port = free_port()
    flower = DustpanProcess("flower", ["flower", "--port", str(port), *args], fleet.env, log_dir).start()
    fleet.workers.append(flower)  # stopped with the fleet
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 60, f"Flower to answer /healthcheck\n{flower.log_tail()}")
    return url


def accumulate_tasks(client: httpx.Client) -> list[dict[str, object]]:
    tasks = client.get("/api/tasks", params={"limit": 100}).json()
    return [task for task in tasks.values() if task.get("name") == "ingestion.accumulate"]


def test_flower_lists_the_accumulate_task_a_signed_webhook_caused(
    make_fleet: Callable[..., Fleet], log_dir: Path
) -> None:
    fleet = make_fleet(**CREDENTIALS)
    fleet.start_api()
    fleet.start_worker()
    url = start_flower(fleet, log_dir)
    symbols, posted = iter(SYMBOLS), []

    with (
        httpx.Client(base_url=fleet.api_url, timeout=30) as api,
        httpx.Client(base_url=url, auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=30) as flower,
    ):

        def succeeded() -> list[dict[str, object]]:
            return [task for task in accumulate_tasks(flower) if task["state"] == "SUCCESS"]

        def listed_after_a_new_trade() -> bool:
            # Events sent before Flower's receiver was listening are gone: each try causes a new task.
            posted.append(next(symbols))
            post_trades(api, WEBHOOK_SECRET, [trade(f"flower-{posted[-1]}", posted[-1])])
            try:
                wait_for(lambda: bool(succeeded()), 5, "the task")
            except AssertionError:
                return False
            return True

        wait_for(listed_after_a_new_trade, 60, "Flower to list a succeeded ingestion.accumulate", interval=0)
        task = succeeded()[0]
        assert any(symbol in str(task["args"]) for symbol in posted), task
        assert str(task["worker"]).startswith("test1-"), task
        workers = flower.get("/api/workers", params={"refresh": "true"}).json()
        assert any(name.startswith("test1-") for name in workers), workers


def test_flower_refuses_every_page_without_the_right_credentials(
    make_fleet: Callable[..., Fleet], log_dir: Path
) -> None:
    fleet = make_fleet(**CREDENTIALS)
    url = start_flower(fleet, log_dir, "--address", "127.0.0.1")
    with httpx.Client(base_url=url, timeout=30) as client:
        for path in PROTECTED:
            assert client.get(path).status_code == 401, path
            assert client.get(path, auth=(FLOWER_USER, "wrong-password")).status_code == 401, path
            assert client.get(path, auth=("intruder", FLOWER_PASSWORD)).status_code == 401, path
        assert client.get("/metrics", auth=(FLOWER_USER, FLOWER_PASSWORD)).status_code == 200
        assert client.get("/api/tasks", auth=(FLOWER_USER, FLOWER_PASSWORD)).status_code == 200
    assert FLOWER_PASSWORD not in Path(log_dir / "flower.log").read_text()


def test_flower_without_credentials_exits_2_naming_the_setting(
    make_fleet: Callable[..., Fleet],
) -> None:
    fleet = make_fleet()
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", "flower", "--port", str(free_port())],
        env=fleet.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert "DUSTPAN_FLOWER_USER" in line and "--insecure" in line


def test_flower_insecure_starts_without_credentials_only_when_asked(
    make_fleet: Callable[..., Fleet], log_dir: Path
) -> None:
    fleet = make_fleet()
    url = start_flower(fleet, log_dir, "--insecure")
    assert httpx.get(f"{url}/", timeout=30).status_code == 200
