"""Bulkheads on real parts (SPEC 6): a symbol whose orders hang at the brokerage delays no other
symbol. Real API, worker and Beat processes; the Alpaca stub holds the sick symbols' order
POSTs open until the test lets them go. Assertions are on the order of events, not wall time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from tests.integration.conftest import WEBHOOK_SECRET, Books, alpaca_fleet_env
from tests.support.alpaca_stub import AlpacaStub
from tests.support.feed import post_trades
from tests.support.fleet import Fleet, wait_for
from workers.worker_pools import execution_node

SICK = ["SICK1", "SICK2", "SICK3"]  # more hanging symbols than the prefork pool has processes


@pytest.fixture
def stub() -> Iterator[AlpacaStub]:
    with AlpacaStub() as running:
        running.hold_symbols = set(SICK)
        yield running


@pytest.fixture
def fleet(clean_database: str, broker_url: str, tmp_path: Path, log_dir: Path, stub: AlpacaStub) -> Iterator[Fleet]:
    env = alpaca_fleet_env(
        clean_database,
        broker_url,
        tmp_path / "data",
        stub,
        DUSTPAN_ALPACA_TIMEOUT_SECONDS="120",  # the held calls hang longer than the test waits
        # A standby whatever the load the rest of the suite leaves on this machine.
        DUSTPAN_EXECUTION__STANDBY_BELOW_LOAD_PERCENT="100000",
    )
    running = Fleet(env, log_dir)
    running.start_api()
    running.start_worker(concurrency=2)  # one `dustpan worker`, no options: the default topology
    running.start_beat()
    yield running
    stub.release_held()
    running.stop()


def send(fleet: Fleet, symbol: str, n: int) -> None:
    batch = [
        {"id": f"{symbol}-{n}", "symbol": symbol, "side": "sell", "quantity": "1.5", "price": "100",
         "executed_at": "2026-11-02T14:30:00Z"}
    ]  # fmt: skip
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        assert post_trades(client, WEBHOOK_SECRET, batch)["accepted"] == 1


def lock_nowait(url: str, query: str, *args: object) -> int:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query, args)
            return len(cursor.fetchall())
    finally:
        connection.rollback()
        connection.close()


def test_healthy_symbols_trade_while_others_hang_at_the_brokerage(fleet: Fleet, books: Books, stub: AlpacaStub) -> None:
    for symbol in SICK:
        send(fleet, symbol, 1)
    wait_for(lambda: sum(stub.held_posts.values()) == len(SICK), 30, "every sick symbol's order POST to hang")

    # While those calls hang, a healthy symbol's trade is accumulated and its order placed...
    send(fleet, "HEALTHY", 1)
    # 30 s: far above a healthy order's latency, below the hard time limit that would free a stuck process.
    wait_for(lambda: any(o["symbol"] == "HEALTHY" for o in stub.orders.values()), 30, "the healthy order")
    assert books.value("SELECT status FROM trades WHERE id = 'HEALTHY-1'") == "accumulated"
    assert sum(stub.held_posts.values()) == len(SICK) and stub.hold_symbols  # still hanging

    # ...and nothing the hanging calls touch is locked: another worker could take every row now.
    sick_executions = "SELECT id FROM executions WHERE symbol = ANY(%s) FOR UPDATE NOWAIT"
    assert lock_nowait(books.url, sick_executions, SICK) == len(SICK)
    assert lock_nowait(books.url, "SELECT symbol FROM accumulators WHERE symbol = ANY(%s) FOR UPDATE NOWAIT", SICK) == 3

    stub.release_held()
    wait_for(books.drained, 60, "the held orders to be recorded")
    filled = books.rows("SELECT symbol, status FROM executions ORDER BY symbol")
    assert filled == [(s, "filled") for s in sorted(["HEALTHY", *SICK])]
    assert max(stub.posts_per_client_order_id.values()) == 1


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGSEGV"])
def test_execution_pool_killed_mid_call_is_replaced_and_its_work_finished(
    fleet: Fleet, books: Books, stub: AlpacaStub, signal_name: str
) -> None:
    import signal
    import time

    for symbol in SICK:
        send(fleet, symbol, 1)
    wait_for(lambda: sum(stub.held_posts.values()) == len(SICK), 30, "every sick symbol's order POST to hang")
    [worker] = fleet.workers
    # Its keeper has a standby ready (imported, waiting): the standby takes over.
    wait_for(lambda: "execution pool standby ready" in worker.log_path.read_text(errors="replace"), 60, "a standby")
    io_pool = execution_node(worker.children())
    assert io_pool is not None
    # The pool dies with three calls under way: killed, or crashed in native code.
    io_pool.send_signal(getattr(signal, signal_name))
    killed = time.monotonic()

    # The answers the dead pool waited for never come; the orders are at the broker all the same.
    wait_for(books.drained, 60, "the replacement pool to find the orders and record them")
    recovered = time.monotonic() - killed
    print(f"\nexecution pool {signal_name}ed mid-call: its 3 executions recorded {recovered:.1f} s later")
    replacement = execution_node(worker.children())
    assert replacement is not None and replacement.is_running() and replacement.pid != io_pool.pid
    assert books.rows("SELECT DISTINCT status FROM executions") == [("filled",)]
    assert max(stub.posts_per_client_order_id.values()) == 1  # looked up, never re-sent
    log = worker.log_path.read_text(errors="replace")
    # Its keeper let go of its three claims at once (no wait for their leases to lapse).
    assert f"execution pool exited (status -{getattr(signal, signal_name).value})" in log
    assert "released 3 claim(s) of the dead execution pool" in log
    assert "the execution pool's standby (pid" in log and "takes over" in log
    if signal_name == "SIGSEGV":  # a crash leaves every thread's Python stack in the log
        assert "Fatal Python error: Segmentation fault" in log and "Thread 0x" in log
