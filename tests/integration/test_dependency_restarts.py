"""Redis and PostgreSQL restarts cost seconds, never a role process, never convergence (SPEC 6).

A fleet of real processes (API, a worker, with and without Beat) runs on a PostgreSQL and a
Redis of its own (the session's shared ones are never touched), with nothing supervising the
roles, as under a plain process manager. Trades are fed through the signed webhook while each
dependency is restarted in turn: Redis SIGKILLed, Redis stopped with SIGTERM (it writes its AOF
and replays it at start), PostgreSQL stopped `-m fast` and crashed `-m immediate`. A 503 from
the webhook is retried as is until 202 (a retry is always safe). After each restart no role
has exited and the backlog drains; the seconds from the dependency's return to the backlog
drained are printed. At the end every accepted trade is accumulated and the books are exact.
Without Beat, the workers' own sweep must finish what the outage left undone.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books, fleet_env
from tests.support.feed import make_trades, post_trades
from tests.support.fleet import DustpanProcess, Fleet, wait_for
from tests.support.totals import running_and_recomputed
from workers.cli import migrate
from workers.embedded import EmbeddedPostgres, EmbeddedRedis

pytestmark = pytest.mark.integration

SYMBOLS = ("AAA", "BBB", "CCC", "DDD", "EEE", "FFF")
DOWN_SECONDS = 3  # long enough for every role to notice
DRAIN_TIMEOUT = 90


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "own-pg", fsync=False)  # a server crash, not a machine crash
    server.start()
    yield server
    server.stop()


class Feeder:
    """One client posting batches over every symbol until stopped; each batch retried as is until 202."""

    def __init__(self, api_url: str, run: str) -> None:
        self.api_url, self.run = api_url, run
        self.accepted: list[str] = []
        self.answers: Counter[str] = Counter()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "a batch was never answered 202"
        if self.errors:
            raise AssertionError(f"the feed failed: {self.errors[0]!r}")

    def _feed(self) -> None:
        rng = random.Random(self.run)
        try:
            with httpx.Client(base_url=self.api_url, timeout=30) as client:
                batch = 0
                while not self._stop.is_set():
                    trades = make_trades(SYMBOLS[batch % len(SYMBOLS)], 5, rng, prefix=f"{self.run}-{batch}")
                    self._deliver(client, trades)
                    self.accepted.extend(trade["id"] for trade in trades)
                    batch += 1
                    time.sleep(0.05)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def _deliver(self, client: httpx.Client, trades: list[dict[str, str]]) -> None:
        while True:
            try:
                post_trades(client, WEBHOOK_SECRET, trades)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 503:
                    raise  # the feed is valid: anything but "not stored, retry" is a bug
                self.answers["503"] += 1
            except httpx.TransportError as exc:
                self.answers[type(exc).__name__] += 1
            else:
                self.answers["202"] += 1
                return
            time.sleep(0.2)


def _roles(fleet: Fleet) -> list[DustpanProcess]:
    assert fleet.api is not None
    return [fleet.api, *fleet.workers, *fleet.beats]


def _assert_roles_alive(fleet: Fleet, after: str) -> None:
    for role in _roles(fleet):
        assert role.process is not None
        assert role.process.poll() is None, f"{role.name} exited after {after}:\n{role.log_tail()}"


def _assert_books_exact(fleet: Fleet, books: Books, accepted: list[str]) -> None:
    audit = httpx.get(f"{fleet.api_url}/audit", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30).json()
    assert audit["ok"], audit
    assert books.value("SELECT count(*) FROM trades") == len(set(accepted))
    assert books.value("SELECT count(*) FROM trades WHERE status = 'accumulated' AND id = ANY(%s)", accepted) == len(
        set(accepted)
    )
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
    running, recomputed = running_and_recomputed(books.url)
    assert running == recomputed and recomputed, (running, recomputed)
    posts = books.rows("SELECT client_order_id, count(*) FROM paper_order_requests GROUP BY 1 HAVING count(*) > 1")
    assert posts == [], "an order was sent twice"
    assert books.value("SELECT count(*) FROM paper_orders") == books.value("SELECT count(*) FROM executions")


# Celery's own lines about a lost broker connection carry a traceback, ours never do.
CELERY_CONNECTION_LINES = ("Couldn't ack", "celery.worker.consumer")


def _assert_one_line_per_failure(fleet: Fleet) -> None:
    """Tasks that met an outage were retried with a WARNING line; nothing failed with a traceback."""
    worker_log = "".join(w.log_path.read_text(errors="replace") for w in fleet.workers)
    assert "PostgreSQL away, retrying in" in worker_log, "no task met the PostgreSQL restarts?"
    assert "raised unexpected" not in worker_log, "a task failed instead of being retried"
    for role in _roles(fleet):
        record = ""
        for line in role.log_path.read_text(errors="replace").splitlines():
            if line[:4].isdigit():  # a log record starts with its timestamp
                record = line
            elif line.startswith("Traceback") and not any(known in record for known in CELERY_CONNECTION_LINES):
                pytest.fail(f"{role.name} logged a traceback after: {record[:600]}")


def _restarts(postgres: EmbeddedPostgres, redis_server: EmbeddedRedis) -> list[tuple[str, Callable[[], None]]]:
    def redis_sigkill() -> None:
        redis_server.kill()
        time.sleep(DOWN_SECONDS)
        redis_server.start()

    def redis_sigterm_aof() -> None:
        redis_server.stop()  # SIGTERM: writes its AOF; start() returns once it is replayed
        time.sleep(DOWN_SECONDS)
        redis_server.start()

    def postgres_fast() -> None:
        postgres.stop()  # SIGINT: pg_ctl -m fast
        time.sleep(DOWN_SECONDS)
        postgres.start()

    def postgres_immediate() -> None:
        postgres.restart(immediate=True)  # SIGQUIT: pg_ctl -m immediate, then crash recovery

    return [
        ("redis SIGKILL", redis_sigkill),
        ("redis SIGTERM + AOF", redis_sigterm_aof),
        ("postgres -m fast", postgres_fast),
        ("postgres -m immediate", postgres_immediate),
    ]


@pytest.mark.parametrize("with_beat", [True, False], ids=["beat-running", "beat-stopped"])
def test_dependency_restarts_cost_seconds_never_a_role_or_a_trade(
    with_beat: bool, own_postgres: EmbeddedPostgres, own_redis: EmbeddedRedis, tmp_path: Path, log_dir: Path
) -> None:
    database_url = own_postgres.url
    migrate(database_url)
    books = Books(database_url)
    env = fleet_env(
        database_url,
        own_redis.url,
        tmp_path / "data",
        DUSTPAN_SCHEDULE__LEADER_LOCK_SECONDS="6",
        DUSTPAN_CELERY__VISIBILITY_TIMEOUT_SECONDS="20",  # a message whose ack was lost comes back soon
        DUSTPAN_LOG_FORMAT="text",
    )
    fleet = Fleet(env, log_dir)
    accepted: list[str] = []
    recovery: dict[str, float] = {}
    answers: Counter[str] = Counter()
    try:
        fleet.start_api()
        fleet.start_worker(concurrency=2)
        if with_beat:
            fleet.start_beat()
        for n, (kind, restart) in enumerate(_restarts(own_postgres, own_redis)):
            feeder = Feeder(fleet.api_url, f"r{n}")
            time.sleep(1.5)  # tasks in flight when the dependency goes
            restart()
            back = time.monotonic()
            time.sleep(1)  # trades keep coming after the return, too
            feeder.stop()
            accepted += feeder.accepted
            answers += feeder.answers
            wait_for(books.drained, DRAIN_TIMEOUT, f"the backlog to drain after {kind}", interval=0.25)
            recovery[kind] = time.monotonic() - back
            _assert_roles_alive(fleet, kind)
        wait_for(
            lambda: books.value("SELECT count(*) FROM trades WHERE status = 'received'") == 0,
            DRAIN_TIMEOUT,
            "every trade to be accumulated",
        )
        _assert_roles_alive(fleet, "every restart")
        _assert_books_exact(fleet, books, accepted)
        _assert_one_line_per_failure(fleet)
    finally:
        fleet.stop()
        figures = ", ".join(f"{kind}: {seconds:.1f} s" for kind, seconds in recovery.items())
        print(f"\nrecovery (dependency back -> backlog drained), Beat {'on' if with_beat else 'off'}: {figures}")
        print(f"webhook answers: {dict(answers)}; trades accepted: {len(accepted)}")
