"""A worker outlives Redis restarts: the guard in workers/celery_patches.py.

Celery 5.7.0 + kombu 5.7.0 without it: when Redis is SIGKILLed while the worker's main process
has a BRPOP outstanding and messages delivered but not yet acknowledged, the consumer's
recovery closes a half-closed channel after its transport was detached, and the worker exits
with ``Unrecoverable error: AttributeError("'NoneType' object has no attribute 'hostname'")``
instead of reconnecting. The first test replays that recovery on a bare kombu connection,
deterministically; the second runs a real worker through Redis restarts under webhook load.
Both own their Redis (the session's shared one must never be killed).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

from tests.integration.conftest import WEBHOOK_SECRET, Books, fleet_env
from tests.support.feed import make_trades, post_trades
from tests.support.fleet import DustpanProcess, Fleet, wait_for
from workers.embedded import EmbeddedRedis

pytestmark = pytest.mark.integration

RESTARTS = 5
VISIBILITY_SECONDS = 2


def test_app_installs_the_guard() -> None:
    import kombu.transport.redis

    import workers.celery_app  # noqa: F401 - importing the app is what installs it

    assert getattr(kombu.transport.redis.Channel, "_dustpan_guarded", False)


def test_recovery_after_a_lost_brpop_reply_closes_cleanly_and_keeps_the_message(own_redis: EmbeddedRedis) -> None:
    import workers.celery_patches  # noqa: F401

    options = {"visibility_timeout": VISIBILITY_SECONDS}
    connection = Connection(own_redis.url, transport_options=options)
    channel = connection.default_channel
    tasks = Queue("tasks", Exchange("tasks"), "tasks")
    Producer(channel).publish({"n": 1}, exchange=tasks.exchange, routing_key="tasks", declare=[tasks])
    delivered: list[Message] = []
    Consumer(channel, [tasks], callbacks=[lambda _body, message: delivered.append(message)], accept=["json"]).consume()
    # A second channel with an auto-delete fanout queue, as the worker's remote control has: its
    # close fails too, and stops collect() before it gets back to the first channel.
    control = connection.channel()
    broadcast = Queue("control.me", Exchange("control", type="fanout"), auto_delete=True)
    Consumer(control, [broadcast], callbacks=[lambda _body, _message: None], accept=["json"]).consume()
    deadline = time.monotonic() + 10
    while not delivered and time.monotonic() < deadline:
        with suppress(TimeoutError):
            connection.drain_events(timeout=1)
    assert len(delivered) == 1  # delivered, not acknowledged: in Redis's unacked set
    channel._brpop_start()  # the next BRPOP is outstanding, as in the worker's event loop

    own_redis.kill()
    # Celery 5.7.0's Consumer.on_connection_error_after_connected, minus its logging:
    with suppress(Exception):
        connection.collect()
    connection.close()  # raised AttributeError: 'NoneType' object has no attribute 'hostname'
    own_redis.start()

    client = redis.Redis.from_url(own_redis.url)
    try:
        assert client.hlen("unacked") == 1, "the unacknowledged message survives the restart"
        time.sleep(VISIBILITY_SECONDS + 0.5)
        with Connection(own_redis.url, transport_options=options) as fresh:
            fresh.default_channel.qos.restore_visible(num=100, interval=1)
        assert (client.hlen("unacked"), client.llen("tasks")) == (0, 1), "it is back in its queue"
    finally:
        client.close()


def test_worker_survives_redis_restarts_and_keeps_accumulating(
    clean_database: str, own_redis: EmbeddedRedis, tmp_path: Path, log_dir: Path
) -> None:
    rng = random.Random(20261121)
    books = Books(clean_database)
    fleet = Fleet(fleet_env(clean_database, own_redis.url, tmp_path / "data"), log_dir)
    accepted: list[str] = []
    try:
        fleet.start_api()
        worker = fleet.start_worker(concurrency=2)
        with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
            for restart in range(1, RESTARTS + 1):
                with _feeding(fleet.api_url, f"r{restart}", accepted):  # tasks in flight when Redis dies
                    time.sleep(rng.uniform(1.0, 2.0))
                    own_redis.kill()
                    time.sleep(rng.uniform(0.2, 2.0))
                    own_redis.start()
                wait_for(
                    lambda n=restart: _log(worker).count("Connected to redis") > n or _crashed(worker),
                    60,
                    f"the worker to reconnect after restart {restart} (log: {worker.log_path})",
                )
                _assert_alive(worker)
                marker = make_trades("MRK", 1, rng, prefix=f"after-restart-{restart}")
                post_trades(client, WEBHOOK_SECRET, marker)
                wait_for(
                    lambda trade_id=marker[0]["id"]: _status(books, trade_id) == "accumulated",
                    60,
                    f"a webhook sent after restart {restart} to be accumulated (log: {worker.log_path})",
                )
            # Nothing lost: a last run of the symbol takes whatever a lost wake-up left waiting.
            post_trades(client, WEBHOOK_SECRET, make_trades("AAA", 1, rng, prefix="last"))
        wait_for(
            lambda: books.value("SELECT count(*) FROM trades WHERE status = 'received'") == 0,
            120,
            "every stored trade to be accumulated",
        )
        _assert_alive(worker)
        assert accepted
        stored = books.rows("SELECT id FROM trades WHERE status = 'accumulated' AND id = ANY(%s)", accepted)
        assert len(stored) == len(accepted)
    finally:
        fleet.stop()


@contextmanager
def _feeding(api_url: str, prefix: str, accepted: list[str]) -> Iterator[None]:
    """Post batches of AAA trades until the block ends, keeping the ids the API accepted."""
    stop = threading.Event()

    def feed() -> None:
        rng = random.Random(prefix)
        with httpx.Client(base_url=api_url, timeout=10) as client:
            for batch in range(10_000):
                if stop.is_set():
                    return
                trades = make_trades("AAA", 10, rng, prefix=f"{prefix}-{batch}")
                try:
                    post_trades(client, WEBHOOK_SECRET, trades)
                except httpx.HTTPError:
                    continue  # Redis or the API is down for a moment; these may or may not be stored
                accepted.extend(trade["id"] for trade in trades)
                time.sleep(0.05)

    poster = threading.Thread(target=feed, daemon=True)
    poster.start()
    try:
        yield
    finally:
        stop.set()
        poster.join(30)


def _log(worker: DustpanProcess) -> str:
    return worker.log_path.read_text(errors="replace")


def _crashed(worker: DustpanProcess) -> bool:
    assert worker.process is not None
    return worker.process.poll() is not None or "Unrecoverable error" in _log(worker)


def _assert_alive(worker: DustpanProcess) -> None:
    fatal = [line[:600] for line in _log(worker).splitlines() if "Unrecoverable error" in line]
    assert not _crashed(worker), "the worker died instead of reconnecting\n" + "\n".join(fatal or [worker.log_tail()])


def _status(books: Books, trade_id: str) -> object:
    rows = books.rows("SELECT status FROM trades WHERE id = %s", trade_id)
    return rows[0][0] if rows else None
