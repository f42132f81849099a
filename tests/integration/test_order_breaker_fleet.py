"""A sick symbol stays sick alone (issue 12), on real parts: API, worker and Beat processes, the
Alpaca stub timing out every order POST of one symbol. That symbol's order breaker opens, its
executions stop calling the broker, and a healthy symbol's orders go out meanwhile. Assertions
are on rows and on the order of events, never on wall time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from tests.integration.conftest import OPERATOR_AUTH, WEBHOOK_SECRET, Books, alpaca_fleet_env
from tests.support.alpaca_stub import AlpacaStub
from tests.support.feed import post_trades
from tests.support.fleet import Fleet, wait_for

SICK, HEALTHY = "SICKX", "WELLY"


@pytest.fixture
def stub() -> Iterator[AlpacaStub]:
    with AlpacaStub() as running:
        running.sick_symbols = {SICK: "timeout"}  # accepted nothing, answers nothing
        running.stall_seconds = 3  # above the client's read timeout below
        yield running


@pytest.fixture
def fleet(clean_database: str, broker_url: str, tmp_path: Path, log_dir: Path, stub: AlpacaStub) -> Iterator[Fleet]:
    env = alpaca_fleet_env(
        clean_database,
        broker_url,
        tmp_path / "data",
        stub,
        DUSTPAN_ALPACA_TIMEOUT_SECONDS="1",
        DUSTPAN_EXECUTION__FAILURES_TO_OPEN="3",
        DUSTPAN_EXECUTION__BREAKER_COOLDOWN_SECONDS="600",  # stays open until the test ends it
        DUSTPAN_EXECUTION__BREAKER_MAX_COOLDOWN_SECONDS="600",
    )
    running = Fleet(env, log_dir)
    running.start_api()
    running.start_worker(concurrency=2)
    running.start_beat()
    yield running
    running.stop()


def send(fleet: Fleet, symbol: str, n: int) -> None:
    batch = [
        {"id": f"{symbol}-{n}", "symbol": symbol, "side": "buy", "quantity": "1.5", "price": "100",
         "executed_at": "2026-11-02T14:30:00Z"}
    ]  # fmt: skip
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        assert post_trades(client, WEBHOOK_SECRET, batch)["accepted"] == 1


def end_cooldown(url: str, symbol: str) -> None:
    connection = psycopg2.connect(url)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "UPDATE order_call_health SET cooldown_until = now() - interval '1 second' WHERE symbol = %s", (symbol,)
            )
    finally:
        connection.close()


def sick_posts(stub: AlpacaStub) -> int:
    return sum(1 for r in stub.requests if r.method == "POST" and r.path == "/v2/orders" and SICK in r.body)


def test_a_symbol_whose_orders_time_out_opens_its_breaker_while_others_trade(
    fleet: Fleet, books: Books, stub: AlpacaStub
) -> None:
    for n in range(2):
        send(fleet, SICK, n)  # 3 shares, in one execution or two
    wait_for(
        lambda: books.rows("SELECT state FROM order_call_health WHERE symbol = %s", SICK) == [("open",)],
        90,
        "the sick symbol's breaker to open",
    )
    failures, opens = books.rows("SELECT consecutive_failures, opens FROM order_call_health WHERE symbol = %s", SICK)[0]
    assert failures >= 3 and opens == 1  # a call already under way when it opened still counts
    # Calls claimed before it opened end within the read timeout; after that nothing claims the symbol.
    wait_for(
        lambda: books.value("SELECT count(*) FROM executions WHERE symbol = %s AND claimed_by IS NOT NULL", SICK) == 0,
        30,
        "the sick symbol's last calls to end",
    )
    posts_when_open = sick_posts(stub)

    for n in range(2):
        send(fleet, HEALTHY, n)
    healthy_filled = "SELECT coalesce(sum(filled_quantity), 0) FROM executions WHERE symbol = %s"
    wait_for(lambda: books.value(healthy_filled, HEALTHY) == 3, 60, "the healthy symbol's 3 shares to fill")
    # The sick symbol asked the broker nothing while the healthy one traded; its work is held, not lost.
    assert sick_posts(stub) == posts_when_open
    assert books.rows("SELECT DISTINCT status FROM executions WHERE symbol = %s", SICK) == [("pending",)]
    assert books.rows("SELECT symbol FROM order_call_health WHERE symbol = %s", HEALTHY) == []
    assert open_breakers(fleet) == [f'dustpan_order_breaker_open{{symbol="{SICK}"}} 1.0']
    worker_log = fleet.workers[0].log_path.read_text(errors="replace")
    assert f"orders of {SICK}: 3 broker answers in a row said nothing" in worker_log

    # The broker heals and the cooldown ends: one probe closes the breaker, then the rest go out,
    # each looked up first; nothing the broker accepted is ever sent again.
    stub.sick_symbols = {}
    end_cooldown(books.url, SICK)
    wait_for(books.drained, 90, "the sick symbol's executions to fill after the probe")
    assert books.rows("SELECT state, consecutive_failures FROM order_call_health WHERE symbol = %s", SICK) == [
        ("closed", 0)
    ]
    assert books.rows("SELECT DISTINCT status FROM executions") == [("filled",)]
    assert not stub.resent_after_accept
    assert "breaker closed" in fleet.workers[0].log_path.read_text(errors="replace")
    assert open_breakers(fleet) == []


def open_breakers(fleet: Fleet) -> list[str]:
    response = httpx.get(f"{fleet.api_url}/metrics", headers=OPERATOR_AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return [line for line in response.text.splitlines() if line.startswith("dustpan_order_breaker_open{")]
