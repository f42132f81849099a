"""Chaos: 50,000 trades through a fleet whose workers, Redis and PostgreSQL keep dying.

The short form (CI) injects a fault every few seconds while the feed runs, with nothing
restarting a role that exits by itself (none may: a Redis or PostgreSQL restart costs
seconds, never a process); the long form (``pytest tests/chaos --chaos-long -s``) restarts
what dies, as compose would, injects more, and puts a TCP fault proxy with latency
and connection resets between the fleet and Redis / PostgreSQL. The brokerage stub times
out after accepting 10% of the orders and answers 5xx to 5%; it answers a 422 to 3% of the
orders it accepted, replaces 3% (the fill lands on a replaced_by order), and answers 5% of the
order lookups with Alpaca's bare 403 "forbidden.". At the end every SPEC section 5
invariant holds, the stub saw every client_order_id at most once, and no trade is missing.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import API_TOKEN, WEBHOOK_SECRET, Books, alpaca_fleet_env
from tests.support.alpaca_stub import AlpacaStub
from tests.support.chaos import FAULT_KINDS, ChaosPlan, FaultInjector, Feed, chaos_feed
from tests.support.fault_proxy import FaultProxy
from tests.support.fleet import Fleet, wait_for
from workers.cli import migrate
from workers.embedded import EmbeddedPostgres, EmbeddedRedis

SHORT = ChaosPlan(  # a feed of about 40 s: several rounds of every fault kind
    trades=50_000,
    symbols=12,
    redelivery_percent=20,
    clients=3,
    max_batch=20,
    fault_every=(0.5, 1.5),
    seed=61,
    pause_seconds=0.02,
)
# A feed of about 5 minutes, some 20 rounds of every fault kind (and the proxy's).
LONG = replace(SHORT, fault_every=(1.0, 3.0), seed=62, pause_seconds=0.15)
PROXY_FAULTS = ["proxy resets every redis connection", "proxy resets every postgres connection"]


@pytest.fixture
def long_form(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--chaos-long"))


def test_chaos_loses_nothing_and_orders_nothing_twice(
    long_form: bool, chaos_postgres: EmbeddedPostgres, chaos_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    plan = LONG if long_form else SHORT
    database_url = chaos_postgres.create_database("dustpan_chaos")
    migrate(database_url)
    with ExitStack() as stack:
        stub = stack.enter_context(AlpacaStub(seed=plan.seed))
        stub.order_fault_percent = {"timeout_after_accept": 10, "500": 5, "422_after_accept": 3, "replaced": 3}
        stub.lookup_fault_percent = {"403": 5}
        stub.stall_seconds = 2.0  # above the adapter's 1 s timeout: the worker gives up first
        stub.cash = Decimal("1e12")
        fleet_database, fleet_broker, proxies = database_url, chaos_redis.url, []
        if long_form:
            proxies = [
                stack.enter_context(FaultProxy.for_url(url, seed=plan.seed)) for url in (chaos_redis.url, database_url)
            ]
            for proxy in proxies:
                proxy.latency_seconds, proxy.jitter_seconds, proxy.reset_probability = 0.002, 0.003, 0.0002
            fleet_broker, fleet_database = proxies[0].url_for(fleet_broker), proxies[1].url_for(fleet_database)
        log_dir = tmp_path / "logs"
        log_dir.mkdir()
        fleet = Fleet(_env(fleet_database, fleet_broker, stub, tmp_path), log_dir)
        stack.callback(fleet.stop)
        fleet.start_api()
        for _ in range(2):
            fleet.start_worker(concurrency=3)
        fleet.start_beat()

        trades, batches = chaos_feed(plan)
        # The short form runs with nothing restarting the roles (SPEC 6: no role exits on a
        # Redis or PostgreSQL restart); the long form restarts what dies, as compose would.
        extra = PROXY_FAULTS if long_form else []
        injector = FaultInjector(fleet, chaos_postgres, chaos_redis, plan, extra, supervised=long_form)
        injector.on_fault = lambda kind: proxies[0 if "redis" in kind else 1].reset_all()
        feed = Feed(fleet.api_url, WEBHOOK_SECRET, batches, plan.clients, plan.pause_seconds)
        started = time.monotonic()
        feed.start()
        injector.start()
        try:
            feed.join(timeout=1200)
        finally:
            injector.stop()
        fed = time.monotonic() - started
        for proxy in proxies:
            proxy.reset_probability = 0
        injector.supervise()

        books = Books(database_url)
        wait_for(lambda: _quiet(books), 600, "the fleet to drain after the faults", interval=1)
        drained = time.monotonic() - started
        _report(plan, trades, batches, feed, injector, stub, books, proxies, fed, drained)
        _assert_nothing_lost_nothing_twice(fleet, books, stub, injector, trades)


def _env(database_url: str, broker_url: str, stub: AlpacaStub, tmp_path: Path) -> dict[str, str]:
    return alpaca_fleet_env(
        database_url,
        broker_url,
        tmp_path / "data",
        stub,
        DUSTPAN_ALPACA_TIMEOUT_SECONDS="1",
        DUSTPAN_SCHEDULE__BALANCES_SECONDS="2",
        # A SIGKILLed worker's unacknowledged messages come back after 20 s, not an hour.
        DUSTPAN_CELERY__VISIBILITY_TIMEOUT_SECONDS="20",
    )


def _quiet(books: Books) -> bool:
    try:
        return books.drained()
    except Exception:  # PostgreSQL may still be replaying its WAL
        return False


def _report(
    plan: ChaosPlan,
    trades: list[dict[str, str]],
    batches: list[list[dict[str, str]]],
    feed: Feed,
    injector: FaultInjector,
    stub: AlpacaStub,
    books: Books,
    proxies: list[FaultProxy],
    fed: float,  # float-ok: seconds
    drained: float,  # float-ok: seconds
) -> None:
    counts: Counter[str] = Counter()
    counts["trades"] = len(trades)
    counts["deliveries (with re-deliveries)"] = sum(len(b) for b in batches)
    counts.update(feed.counts)
    counts.update(injector.counts)
    counts.update({f"stub fault {kind}": n for kind, n in stub.faults_injected.items()})
    counts["stub order POSTs"] = sum(stub.posts_per_client_order_id.values())
    counts["stub orders accepted"] = len(stub.orders)
    counts["stub POSTs of an already accepted client_order_id"] = sum(stub.resent_after_accept.values())
    for status, n in books.rows("SELECT status, count(*) FROM executions GROUP BY status"):
        counts[f"executions {status}"] = int(str(n))
    for name, proxy in zip(("redis", "postgres")[: len(proxies)], proxies, strict=True):
        counts.update({f"proxy {name} {key}": n for key, n in proxy.counts().items()})
    form = "long" if proxies else "short"
    print(f"\nchaos ({form} form): fed in {fed:.0f} s, drained at {drained:.0f} s")
    for key, n in sorted(counts.items()):
        print(f"  {key:60} {n:>10,}")


def _assert_nothing_lost_nothing_twice(
    fleet: Fleet, books: Books, stub: AlpacaStub, injector: FaultInjector, trades: list[dict[str, str]]
) -> None:
    assert all(injector.counts[kind] >= 1 for kind in FAULT_KINDS), f"a fault was never injected: {injector.counts}"
    for role, tail in injector.exited.items():
        pytest.fail(f"{role} exited by itself with nothing to restart it:\n{tail}")
    for kind in ("timeout_after_accept", "500", "422_after_accept", "replaced", "403"):
        assert stub.faults_injected[kind] >= 1, f"the stub never answered {kind}: {stub.faults_injected}"
    stored = Counter(str(row[0]) for row in books.rows("SELECT id FROM trades WHERE status = 'accumulated'"))
    assert set(stored) == {t["id"] for t in trades}, "a trade was lost (or one appeared from nowhere)"
    assert max(stored.values()) == 1
    assert books.rows(UNBALANCED_TRADES) == [], "a trade's quantity was applied other than exactly once"

    # A POST answered 5xx accepted nothing and is sent again after a lookup; one the stub had
    # accepted (even if the answer never arrived) must never be sent again.
    assert stub.resent_after_accept == Counter(), "an accepted order was sent again"
    assert len(stub.orders) == len({o["client_order_id"] for o in stub.orders.values()})
    # A replaced order's fill is on its replacement: the books must have followed it there.
    at_stub = {
        o["client_order_id"]: (o["symbol"], o["side"], Decimal(_carrier(stub, o)["filled_qty"]))
        for o in stub.orders.values()
        if o["client_order_id"].startswith("dp-")
    }
    in_books = {
        str(cid): (str(symbol), str(side), Decimal(str(filled)))
        for cid, symbol, side, filled in books.rows(
            "SELECT client_order_id, symbol, side, filled_quantity FROM executions WHERE status <> 'failed'"
        )
    }
    assert at_stub == in_books, "the books and the broker disagree on what was ordered and filled"

    audit = httpx.get(f"{fleet.api_url}/audit", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30).json()
    assert audit["ok"], audit


def _carrier(stub: AlpacaStub, order: dict[str, object]) -> dict[str, object]:
    while order.get("replaced_by"):
        order = stub.orders[str(order["replaced_by"])]
    return order


# Each trade's signed quantity is what its contributions took plus what is still open.
UNBALANCED_TRADES = """
    SELECT t.id FROM trades t LEFT JOIN contributions c ON c.trade_id = t.id
    GROUP BY t.id, t.side, t.quantity, t.open_quantity
    HAVING coalesce(sum(c.quantity), 0) + t.open_quantity
           <> CASE WHEN t.side = 'buy' THEN t.quantity ELSE -t.quantity END
"""
