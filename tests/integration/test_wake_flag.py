"""The wake flag over real Redis (workers/enqueue.py, the protocol in tasks.ports.Enqueue): one
accumulate run queued per symbol however many trades arrive, and a run whose message was lost
(a worker killed with it prefetched) holds its symbol back only until the flag lapses."""

from __future__ import annotations

import time
from typing import Any

import redis

from workers.enqueue import WAKE_KEY, WAKE_TTL_SECONDS, RedisEnqueue


def test_a_lost_run_holds_its_symbol_only_until_the_flag_lapses(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    sent: list[tuple[Any, ...]] = []
    enqueue = RedisEnqueue(lambda: client, lambda name, args, **_: sent.append((name, *args)), {})
    enqueue.wake(["AAPL", "MSFT"])
    enqueue.wake(["AAPL"])  # its run is queued: nothing more
    assert sent == [("ingestion.accumulate", "AAPL"), ("ingestion.accumulate", "MSFT")]
    # AAPL's run never starts (its message died with a worker): its flag lapses by itself, soon
    # enough that the symbol's trades wait about a second, not a sweep or a restart...
    assert WAKE_TTL_SECONDS <= 1
    assert 0 < client.pttl(WAKE_KEY.format(symbol="AAPL")) <= WAKE_TTL_SECONDS * 1000
    deadline = time.monotonic() + WAKE_TTL_SECONDS + 10
    while client.exists(WAKE_KEY.format(symbol="AAPL")):
        assert time.monotonic() < deadline, "the wake flag never lapsed"
        time.sleep(0.05)
    # ...and the next trade of the symbol queues another run.
    enqueue.wake(["AAPL"])
    assert sent[2:] == [("ingestion.accumulate", "AAPL")]
    client.close()
