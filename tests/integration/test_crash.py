"""SIGKILL workers mid-ingestion and mid-execution: nothing lost, nothing doubled, no re-POST."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest
import redis

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books
from tests.support.feed import make_trades, post_trades
from tests.support.fleet import DustpanProcess, Fleet, wait_for
from tests.support.totals import running_and_recomputed


def _assert_books_exact(fleet: Fleet, books: Books, trade_count: int) -> None:
    wait_for(books.drained, 240, "the workers to drain after the crashes", interval=1)
    audit = httpx.get(f"{fleet.api_url}/audit", headers={"Authorization": f"Bearer {API_TOKEN}"}).json()
    assert audit["ok"], audit
    assert books.value("SELECT count(*) FROM trades WHERE status = 'accumulated'") == trade_count
    # Each trade's quantity is either still open or taken by executions, exactly once.
    assert (
        books.rows(
            """SELECT t.id FROM trades t LEFT JOIN contributions c ON c.trade_id = t.id
           GROUP BY t.id, t.side, t.quantity, t.open_quantity
           HAVING coalesce(sum(c.quantity), 0) + t.open_quantity
                  <> CASE WHEN t.side = 'buy' THEN t.quantity ELSE -t.quantity END"""
        )
        == []
    )
    # The running totals, written by triggers in the killed transactions' own commits, are exact.
    running, recomputed = running_and_recomputed(books.url)
    assert running == recomputed and recomputed, (running, recomputed)
    posts = books.rows("SELECT client_order_id, count(*) FROM paper_order_requests GROUP BY 1 HAVING count(*) > 1")
    assert posts == [], "an order was sent twice"
    assert books.value("SELECT count(*) FROM paper_orders") == books.value("SELECT count(*) FROM executions")


def _killed_mid_task(worker: DustpanProcess) -> bool:
    return "exited with 'signal 9 (SIGKILL)'" in worker.log_path.read_text(errors="replace")


def test_workers_killed_mid_ingestion_lose_and_double_nothing(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    fleet = make_fleet(DUSTPAN_ACCUMULATION__BATCH_SIZE="25")  # many short transactions to land in
    fleet.start_api()
    worker = fleet.start_worker()
    fleet.start_beat()
    trades = [t for s in ("AAA", "BBB", "CCC") for t in make_trades(s, 1500, rng)]
    rng.shuffle(trades)

    def feed() -> None:
        # Paced, so that the feed (and the kills made while it lasts) spans seconds however
        # fast the API answers: the kills must land while runs are under way.
        with httpx.Client(base_url=fleet.api_url, timeout=60) as client:
            for i in range(0, len(trades), 20):
                post_trades(client, WEBHOOK_SECRET, trades[i : i + 20])
                time.sleep(0.03)

    poster = threading.Thread(target=feed)
    poster.start()
    kills = 0
    while poster.is_alive():
        time.sleep(rng.uniform(0.2, 0.6))
        kills += worker.kill_children()
    poster.join()
    assert kills >= 2 and _killed_mid_task(worker), "no kill landed inside a running task"
    # And once the whole worker, main process included: its unacked messages stay behind.
    worker.kill()
    fleet.restart_worker(worker)
    _assert_books_exact(fleet, books, len(trades))


@pytest.mark.parametrize("kill_main_process", [False, True], ids=["pool-child", "whole-worker"])
def test_worker_killed_after_the_broker_accepted_never_resends(
    make_fleet, books: Books, kill_main_process: bool
) -> None:  # type: ignore[no-untyped-def]
    # The paper brokerage answers 4 s after accepting: the worker dies inside that window.
    fleet = make_fleet(DUSTPAN_PAPER__ACCEPT_DELAY_SECONDS="4")
    fleet.start_api()
    worker = fleet.start_worker()
    fleet.start_beat()
    rng = random.Random(11)
    trades = [{**t, "side": "buy", "quantity": "1.25"} for s in ("KILL1", "KILL2") for t in make_trades(s, 2, rng)]
    with httpx.Client(base_url=fleet.api_url, timeout=60) as client:
        post_trades(client, WEBHOOK_SECRET, trades)

    accepted_unrecorded = (
        "SELECT count(*) FROM paper_orders p JOIN executions e ON e.client_order_id = p.client_order_id"
        " WHERE e.broker_order_id IS NULL"
    )
    wait_for(lambda: books.value(accepted_unrecorded) > 0, 60, "the broker to accept an unrecorded order")
    if kill_main_process:
        worker.kill()
        fleet.restart_worker(worker)
    else:
        assert worker.kill_children() > 0
        wait_for(lambda: _killed_mid_task(worker), 10, "the worker to report the lost child")
    _assert_books_exact(fleet, books, len(trades))
    assert books.value("SELECT count(*) FROM executions WHERE status = 'filled'") == 2


def test_a_dead_workers_unacknowledged_message_comes_back_and_orders_nothing_twice(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    # No Beat. The message the dead worker held comes back from Redis's unacked hash once it is
    # older than the visibility timeout; the new worker's own sweep may finish the work first.
    # Either way the order is sent once and the message is acknowledged in the end.
    fleet = make_fleet(DUSTPAN_PAPER__ACCEPT_DELAY_SECONDS="30", DUSTPAN_CELERY__VISIBILITY_TIMEOUT_SECONDS="20")
    fleet.start_api()
    dying = fleet.start_worker()
    trades = [{**t, "side": "buy", "quantity": "2"} for t in make_trades("RESTORE", 1, random.Random(5))]
    with httpx.Client(base_url=fleet.api_url, timeout=60) as client:
        post_trades(client, WEBHOOK_SECRET, trades)
    wait_for(lambda: books.value("SELECT count(*) FROM paper_orders") == 1, 60, "the broker to accept the order")
    dying.kill()
    broker = redis.Redis.from_url(fleet.env["DUSTPAN_BROKER_URL"])
    assert broker.hlen("unacked") == 1, "the dead worker's message should wait in the unacked hash"

    fleet.start_worker()
    wait_for(lambda: books.value("SELECT status FROM executions") == "filled", 90, "the restored message to run")
    # The ack follows the task's commit by a moment.
    wait_for(lambda: broker.hlen("unacked") == 0, 60, "the restored message to be acknowledged")
    assert books.value("SELECT count(*) FROM paper_order_requests") == 1, "the order was sent again"
    assert books.value("SELECT filled_quantity FROM executions") == 2
