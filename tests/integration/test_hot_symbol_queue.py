"""A hot symbol on its own ingestion queue is accumulated only by the workers of that queue."""

from __future__ import annotations

import random

import httpx

from tests.integration.conftest import WEBHOOK_SECRET, Books
from tests.support.feed import make_trades, post_trades
from tests.support.fleet import Fleet, wait_for

WAITING = "SELECT symbol, count(*) FROM trades WHERE status = 'received' GROUP BY symbol ORDER BY symbol"


def test_hot_symbol_waits_for_its_own_queue_while_others_flow(make_fleet, books: Books) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = make_fleet(DUSTPAN_ACCUMULATION__QUEUES='{"HOTQ": "ingestion-hot"}')
    fleet.start_api()
    fleet.start_worker(queues="ingestion,execution,ops")
    rng = random.Random(5)
    with httpx.Client(base_url=fleet.api_url) as client:
        post_trades(client, WEBHOOK_SECRET, make_trades("HOTQ", 30, rng) + make_trades("COOL", 30, rng))
    wait_for(lambda: books.rows(WAITING) == [("HOTQ", 30)], 60, "COOL to be accumulated while HOTQ waits")
    fleet.start_worker(queues="ingestion-hot")
    wait_for(lambda: books.rows(WAITING) == [], 60, "the hot queue's worker to accumulate HOTQ")
