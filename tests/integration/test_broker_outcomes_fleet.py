"""Broker outcomes on real parts: API, Celery workers and Beat processes against the Alpaca stub
over HTTP. Each answer that used to double an order ends with the broker holding exactly the
shares the trades net to, and no client order id accepted twice."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books, alpaca_fleet_env
from tests.support.alpaca_stub import AlpacaStub
from tests.support.feed import post_trades
from tests.support.fleet import Fleet, wait_for

D = Decimal


@pytest.fixture
def stub() -> AlpacaStub:
    with AlpacaStub() as running:
        running.stall_seconds = 2.0  # above the workers' 1 s timeout
        yield running


@pytest.fixture
def fleet(clean_database: str, broker_url: str, tmp_path: Path, log_dir: Path, stub: AlpacaStub) -> Fleet:
    env = alpaca_fleet_env(
        clean_database,
        broker_url,
        tmp_path / "data",
        stub,
        DUSTPAN_ALPACA_TIMEOUT_SECONDS="1",
        DUSTPAN_SCHEDULE__BALANCES_SECONDS="2",
        DUSTPAN_EXECUTION__ACCOUNT_PAUSE_SECONDS="3",
    )
    running = Fleet(env, log_dir)
    running.start_api()
    running.start_worker()
    running.start_beat()
    yield running
    running.stop()


def send(fleet: Fleet, trades: list[tuple[str, str, str, str]]) -> None:
    """(id, symbol, side, quantity) trades through the signed webhook."""
    batch = [
        {"id": i, "symbol": s, "side": side, "quantity": q, "price": "100", "executed_at": "2026-11-02T14:30:00Z"}
        for i, s, side, q in trades
    ]
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        assert post_trades(client, WEBHOOK_SECRET, batch)["accepted"] == len(batch)


def assert_broker_holds_what_the_trades_net_to(fleet: Fleet, books: Books, stub: AlpacaStub) -> None:
    wait_for(books.drained, 60, "every execution to settle", interval=0.5)
    nets: Counter[str] = Counter()
    for symbol, side, quantity in books.rows("SELECT symbol, side, quantity FROM trades"):
        nets[str(symbol)] += D(str(quantity)) * (1 if side == "buy" else -1)
    for symbol, net in nets.items():
        held = D(stub.positions[symbol]["qty"]) if symbol in stub.positions else D(0)
        whole = D(int(net))  # the fractional residual waits at dustpan, never at the broker
        assert held == whole, f"{symbol}: broker holds {held}, trades net to {net}"
    assert stub.resent_after_accept == Counter(), "an accepted order was sent again"
    accepted = [o["client_order_id"] for o in stub.orders.values() if o["client_order_id"].startswith("dp-")]
    assert len(accepted) == len(set(accepted)), "two orders under one client order id"
    audit = httpx.get(f"{fleet.api_url}/audit", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30).json()
    assert audit["ok"], audit


def test_403_then_200_on_the_lookup_after_a_timeout_orders_once(fleet: Fleet, books: Books, stub: AlpacaStub) -> None:
    stub.fail_next("timeout_after_accept")  # the next order POST is accepted, its answer lost
    stub.fail_next_lookup("403", count=2)  # and the lookups after it answer "forbidden." twice
    send(fleet, [("t1", "AAA", "buy", "2.5")])
    assert_broker_holds_what_the_trades_net_to(fleet, books, stub)
    assert books.rows("SELECT status, filled_quantity FROM executions") == [("filled", D(2))]
    assert stub.faults_injected["403"] >= 1 and stub.faults_injected["timeout_after_accept"] == 1


def test_replaced_order_with_a_filled_replacement_is_booked_not_reordered(
    fleet: Fleet, books: Books, stub: AlpacaStub
) -> None:
    stub.fail_next("replaced")
    send(fleet, [("t1", "BBB", "buy", "3.25")])
    assert_broker_holds_what_the_trades_net_to(fleet, books, stub)
    [(broker_order_id, status)] = books.rows("SELECT broker_order_id, status FROM executions")
    original = next(o for o in stub.orders.values() if o["client_order_id"].startswith("dp-"))
    assert (original["status"], status, broker_order_id) == ("replaced", "filled", original["replaced_by"])


def test_422_on_post_while_the_order_exists_books_the_order(fleet: Fleet, books: Books, stub: AlpacaStub) -> None:
    stub.fail_next("422_after_accept")
    send(fleet, [("t1", "CCC", "sell", "1.75")])
    assert_broker_holds_what_the_trades_net_to(fleet, books, stub)
    assert books.rows("SELECT status, filled_quantity FROM executions") == [("filled", D(1))]


def test_account_wide_403_alerts_once_freezes_nothing_and_resumes(
    fleet: Fleet, books: Books, stub: AlpacaStub, log_dir: Path
) -> None:
    stub.account_refusal = "forbidden."
    send(fleet, [(f"t-{s}", s, "buy", "1.5") for s in ("DDD", "EEE", "FFF", "GGG")])
    wait_for(lambda: books.value("SELECT count(*) FROM account_pauses") == 1, 30, "the account to be paused")
    wait_for(lambda: _refused_posts(stub) >= 2, 30, "a probe after the pause")
    assert books.value("SELECT count(*) FROM symbol_freezes") == 0
    assert books.value("SELECT count(*) FROM executions WHERE status = 'rejected'") == 0
    stub.account_refusal = None  # the broker lets the account trade again
    wait_for(lambda: books.value("SELECT count(*) FROM account_pauses") == 0, 30, "the probe to lift the pause")
    assert_broker_holds_what_the_trades_net_to(fleet, books, stub)
    alerts = [line for line in _log_lines(log_dir) if line.get("level") == "ERROR" and "paused" in line["message"]]
    assert len(alerts) == 1, alerts
    assert books.value("SELECT count(*) FROM symbol_freezes") == 0


def _refused_posts(stub: AlpacaStub) -> int:
    return sum(stub.posts_per_client_order_id.values()) - len(stub.orders)


def _log_lines(log_dir: Path) -> list[dict[str, str]]:
    lines = []
    for path in log_dir.glob("worker*.log"):
        for text in path.read_text(errors="replace").splitlines():
            if text.startswith("{"):
                lines.append(json.loads(text))
    return lines
