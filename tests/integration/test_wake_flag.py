"""The wake flag over real Redis (workers/enqueue.py, the protocol in tasks.ports.Enqueue): one
accumulate run queued per symbol however many trades arrive; a run whose message was lost (a
worker killed with it prefetched) holds its symbol back about a second, not until the sweep;
and a queue backed up for longer is not flooded with runs."""

from __future__ import annotations

from typing import Any

import redis

from workers.enqueue import WAKE_KEY, WAKE_LOST_AFTER_MS, WAKE_RESEND_HOLD_SECONDS, RedisEnqueue


def test_a_lost_run_holds_its_symbol_about_a_second_and_a_backlog_gets_no_flood(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    sent: list[tuple[Any, ...]] = []
    clock = [1_000_000]
    enqueue = RedisEnqueue(lambda: client, lambda name, args, **_: sent.append(args[0]), {}, now_ms=lambda: clock[0])
    enqueue.wake(["AAPL", "MSFT"])
    clock[0] += WAKE_LOST_AFTER_MS - 1
    enqueue.wake(["AAPL", "MSFT"])  # their runs are queued: nothing more
    assert sent == ["AAPL", "MSFT"]
    enqueue.clear_wake("MSFT")  # MSFT's run started; AAPL's never does (its worker was killed)
    clock[0] += 1
    enqueue.wake(["AAPL", "MSFT"])  # AAPL's flag stood too long: another run; MSFT's was down
    assert sent[2:] == ["AAPL", "MSFT"]
    # AAPL's queue is backed up (its runs wait longer than a second): no run per trade or per
    # second, one more per hold at most.
    for _ in range(5):
        clock[0] += WAKE_LOST_AFTER_MS
        enqueue.wake(["AAPL"])
    assert sent[4:] == []
    assert 0 < client.ttl("dustpan:wake-resent:AAPL") <= WAKE_RESEND_HOLD_SECONDS
    client.delete("dustpan:wake-resent:AAPL")  # the hold lapsed
    clock[0] += WAKE_LOST_AFTER_MS
    enqueue.wake(["AAPL"])
    assert sent[4:] == ["AAPL"]
    # A Redis that lost its scripts (restarted) still raises flags.
    client.script_flush()
    enqueue.clear_wake("AAPL")
    enqueue.wake(["AAPL"])
    assert sent[5:] == ["AAPL"] and client.exists(WAKE_KEY.format(symbol="AAPL"))
    client.close()
