"""Webhook -> broker latency at a steady trickle: from the 202 to the order arriving at the brokerage.

    python bench/webhook_to_broker_latency.py [--rate 200] [--seconds 30] [--symbols 10]
        [--workers W] [--concurrency K] [--database-url URL --broker-url URL]

The real API and real Celery workers (``tests/support/fleet.py``) with ``DUSTPAN_BROKERAGE=alpaca``
pointed at ``tests/support/alpaca_stub.AlpacaStub``, served from this process, which notes the
moment each order request reaches it. Webhooks leave open loop, on a fixed schedule whatever the
answers do: ``--rate`` requests/s of one trade each, for ``--seconds``, round robin over
``--symbols`` symbols (LAT00, LAT01, ...).

Quantities: every trade BUYs exactly 1 share (threshold 1). So each accumulate run turns all
it claimed for a symbol into one execution of that many shares, no fractional residual waits
for later trades, and every trade is in an order: the figure is the pipeline's own latency, not
how long a fraction waits for the next trade.

Each order is mapped to its trades through the database (contributions -> execution ->
``client_order_id`` ``dp-<execution uuid>``); its latency is the stub's receive time of the
POST /v2/orders minus the latest 202 of its trades. Prints p50/p99 with a breakdown (202 ->
accumulate run start, the ``accumulated_at`` the task stamps before it claims; -> its log line
"execution <id> created", written after its commit; -> the submit task's order lookup at the
broker; -> the order POST), webhook latency, CPU per role and
peak RSS. Target: p99 <= 100 ms. Prints figures; never asserts on time. Exits non-zero only
if something broke.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support lives next to bench/

import httpx

from bench._fleet_bench import WEBHOOK_SECRET, FleetBench, add_fleet_options, require_positive, run_fleet_bench
from bench._measure import (
    BenchError,
    Books,
    CpuRoles,
    PeakRss,
    fleet_roles,
    log_offsets_of,
    machine,
    percentile,
    settle,
    task_run_seconds,
)
from bench._webhook_client import OpenLoopRun, Trades, post_open_loop
from tasks.ingestion import client_order_id_for
from tests.support.alpaca_stub import AlpacaStub
from tests.support.feed import post_trades
from tests.support.fleet import Fleet, wait_for

FLEET_QUEUES = ("ingestion", "execution", "ops")
TARGET_P99_MS = 100
TARGET_RSS_MB = 200


class TimedAlpacaStub(AlpacaStub):
    """The stub, noting when (time.perf_counter) each order's first lookup, and the POST it accepted
    (not one it answered 5xx), reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.cash = self.cash * 1000  # every trade buys; never run out of money
        self.posted_at: dict[str, float] = {}
        self.looked_up_at: dict[str, float] = {}
        self._times = threading.Lock()

    def handle(self, method: str, path: str, headers: Any, body: str) -> Any:
        received = time.perf_counter()
        parts = urlsplit(path)
        if method == "GET" and parts.path == "/v2/orders:by_client_order_id":
            self._note(self.looked_up_at, parse_qs(parts.query).get("client_order_id", [""])[0], received)
        fault, reply = super().handle(method, path, headers, body)  # a held order POST returns when released
        if method == "POST" and parts.path == "/v2/orders" and reply is not None and reply.status == 200:
            self._note(self.posted_at, _client_order_id(body), received)
        return fault, reply

    def _note(self, times: dict[str, float], client_order_id: str, at: float) -> None:
        with self._times:
            times.setdefault(client_order_id, at)


def _client_order_id(body: str) -> str:
    try:
        return str(json.loads(body).get("client_order_id", ""))
    except (ValueError, AttributeError):
        return ""


def paced_trades(rate: int, seconds: int, symbols: int, prefix: str) -> list[Trades]:
    start = datetime.now(UTC)
    return [
        [
            {
                "id": f"{prefix}-{n}",
                "symbol": f"LAT{n % symbols:02d}",
                "side": "buy",
                "quantity": "1",
                "price": "100.00",
                "executed_at": (start + timedelta(microseconds=n)).isoformat(),
            }
        ]
        for n in range(rate * seconds)
    ]


@dataclass
class Order:
    client_order_id: str
    last_answer: float  # perf_counter of the latest 202 among its trades
    accumulated: float  # perf_counter of the accumulate run's start
    committed: float | None  # when the accumulate task logged the execution created (after its commit)
    looked_up: float
    posted: float
    trades: int


def orders_from_books(
    books: Books, answered: dict[str, float], stub: TimedAlpacaStub, committed: dict[str, float], clock: float
) -> list[Order]:
    """``answered``: each trade's 202 (perf_counter); ``committed``: by client order id, from the worker
    logs; ``clock``: time.time() - time.perf_counter(), to put the database's timestamps on the bench's clock."""
    rows = books.rows(
        "SELECT e.client_order_id, c.trade_id, t.accumulated_at FROM contributions c"
        " JOIN executions e ON e.id = c.execution_id JOIN trades t ON t.id = c.trade_id"
    )
    by_order: dict[str, list[tuple[str, datetime]]] = {}
    for client_order_id, trade_id, accumulated_at in rows:
        by_order.setdefault(client_order_id, []).append((trade_id, accumulated_at))
    orders = []
    for client_order_id, trades in by_order.items():
        if client_order_id not in stub.posted_at:
            raise BenchError(f"order {client_order_id} is in the books but never reached the broker")
        orders.append(
            Order(
                client_order_id,
                max(answered[trade_id] for trade_id, _ in trades),
                max(at.timestamp() for _, at in trades) - clock,
                committed.get(client_order_id),
                stub.looked_up_at.get(client_order_id, stub.posted_at[client_order_id]),
                stub.posted_at[client_order_id],
                len(trades),
            )
        )
    return orders


def committed_from_logs(fleet: Fleet, clock: float) -> dict[str, float]:
    """When each accumulate task logged "execution <id> created" (JSON logs; nothing with text logs)."""
    found: dict[str, float] = {}
    for worker in fleet.workers:
        for line in worker.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{") or '"execution_id"' not in line or " created" not in line:
                continue
            entry = json.loads(line)
            if str(entry.get("message", "")).endswith(" created"):
                execution = uuid.UUID(entry["execution_id"])
                found[client_order_id_for(execution)] = datetime.fromisoformat(entry["time"]).timestamp() - clock
    return found


@dataclass
class Trickle:
    run: OpenLoopRun
    orders: list[Order]
    sent_seconds: float
    cpu_seconds: dict[str, float]  # per role, while sending
    peak_rss_mb: dict[str, float]
    task_runs: dict[str, list[float]]  # run seconds by task name, until the books settled
    settled_seconds: float  # first send until the books settled


def run_trickle(fleet: Fleet, books: Books, stub: TimedAlpacaStub, args: argparse.Namespace, cpu: CpuRoles) -> Trickle:
    settle(books, fleet.env["DUSTPAN_BROKER_URL"], FLEET_QUEUES)
    books.truncate_all()
    requests = paced_trades(args.rate, args.seconds, args.symbols, f"LAT-{int(time.time())}")
    assert fleet.api is not None
    clock = time.time() - time.perf_counter()
    offsets = log_offsets_of(fleet)
    with ThreadPoolExecutor(1) as pool, PeakRss(fleet.api.pid, [w.pid for w in fleet.workers]) as rss:
        cpu_before = cpu.snapshot()
        start = time.perf_counter()
        clients = pool.submit(post_open_loop, fleet.api_url, WEBHOOK_SECRET, requests, args.rate, args.connections)
        run = clients.result(timeout=args.seconds + args.timeout)
        sent_seconds = time.perf_counter() - start
        cpu_after = cpu.snapshot()
        wait_for(lambda: books.accumulated() == len(requests), args.timeout, "every trade to be accumulated")
        settle(books, fleet.env["DUSTPAN_BROKER_URL"], FLEET_QUEUES, timeout=args.timeout)
        settled_seconds = time.perf_counter() - start
    answered = {trades[0]["id"]: answer.answered for answer, trades in zip(run.answers, requests, strict=True)}
    orders = orders_from_books(books, answered, stub, committed_from_logs(fleet, clock), clock)
    in_orders = sum(order.trades for order in orders)
    if in_orders != len(requests):
        raise BenchError(f"{in_orders} of {len(requests)} trades are in an order")
    return Trickle(
        run,
        orders,
        sent_seconds,
        {role: cpu_after[role] - cpu_before[role] for role in cpu_before},
        dict(rss.peaks),
        task_run_seconds(fleet, offsets),
        settled_seconds,
    )


def _row(label: str, seconds: list[float], suffix: str = "") -> None:
    p50, p99, top = (percentile(seconds, 50) * 1000, percentile(seconds, 99) * 1000, max(seconds) * 1000)
    print(f"{label:44}p50 {p50:7.1f}   p99 {p99:7.1f}   max {top:7.1f}   ms{suffix}")


def print_figures(args: argparse.Namespace, t: Trickle) -> None:
    requests, orders, late = len(t.run.answers), t.orders, t.run.late_ms
    latency = [o.posted - o.last_answer for o in orders]
    print(
        f"\n{requests:,} webhooks of 1 trade in {t.sent_seconds:.1f} s ({requests / t.sent_seconds:,.0f}/s, asked"
        f" {args.rate}/s), {t.run.connections} connection(s); sends behind schedule p99 {percentile(late, 99):.1f} ms"
    )
    print(f"{len(orders):,} orders at the broker, {requests / len(orders):.1f} trades per order\n")
    _row("webhook request -> 202", [a.answered - a.sent for a in t.run.answers])
    _row("202 -> order at the broker (per order)", latency, f"   target p99 <= {TARGET_P99_MS}")
    _row("  202 -> accumulate run start", [o.accumulated - o.last_answer for o in orders])
    logged = [(o, o.committed) for o in orders if o.committed is not None]
    if len(logged) == len(orders):
        _row("  accumulate run start -> execution logged", [at - o.accumulated for o, at in logged])
        _row("  execution logged -> order lookup", [o.looked_up - at for o, at in logged])
    else:  # text logs: no per-execution commit time
        _row("  accumulate run start -> order lookup", [o.looked_up - o.accumulated for o in orders])
    _row("  order lookup -> order POST", [o.posted - o.looked_up for o in orders])
    for name, runs in sorted(t.task_runs.items()):
        _row(f"task run time: {name} (x{len(runs)})", runs)
    p99 = percentile(latency, 99) * 1000
    print(f"\np99 / target: {p99 / TARGET_P99_MS:.2f}x ({p99:.1f} ms vs {TARGET_P99_MS} ms)")
    pool = args.workers * args.concurrency
    busy = sum(sum(runs) for runs in t.task_runs.values()) / (pool * t.settled_seconds)
    print(f"pool processes busy running tasks: {busy:.0%} of {pool} over {t.settled_seconds:.1f} s (send + settle)")
    cores = len(os.sched_getaffinity(0))
    cpu = ", ".join(f"{role} {seconds:.1f}" for role, seconds in t.cpu_seconds.items())
    print(f"CPU s while sending: {cpu}; {sum(t.cpu_seconds.values()) / (t.sent_seconds * cores):.0%} of the machine")
    api_ms = t.cpu_seconds["api"] / requests * 1000
    print(f"API CPU per webhook: {api_ms:.2f} ms (at most {1000 / api_ms:,.0f} webhooks/s on one core)")
    if requests / t.sent_seconds < 0.95 * args.rate or percentile(late, 99) > 100:
        print(
            f"note: the fleet did not keep up with {args.rate}/s here; requests waited for a free connection"
            " and the 202s came late, so the figures above include that backlog"
        )
    rss = ", ".join(f"{kind} {mb:.0f}" for kind, mb in t.peak_rss_mb.items())
    print(f"peak RSS MB: {rss} (worker target <= {TARGET_RSS_MB} MB per process)")


def warm_up(fleet: Fleet, books: Books, args: argparse.Namespace) -> None:
    """Imports, pools, the broker connection and the balance the buy gate caches, outside the measurement."""
    requests = paced_trades(20, 1, args.symbols, "WARM")
    with httpx.Client(base_url=fleet.api_url, timeout=60) as client:
        answer = post_trades(client, WEBHOOK_SECRET, requests[0])
        if answer["accepted"] != 1:
            raise BenchError(f"warm-up webhook refused: {answer}")
    post_open_loop(fleet.api_url, WEBHOOK_SECRET, requests[1:], 20, args.connections)
    wait_for(lambda: books.accumulated() == len(requests), 120, "the warm-up trades to be accumulated")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=200, help="webhooks (of 1 trade) per second")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32, help="most webhook connections open at once")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the books to settle")
    add_fleet_options(parser)
    args = parser.parse_args(argv)
    require_positive(parser, args, ("rate", "seconds", "symbols", "connections", "workers", "concurrency"))
    stub = TimedAlpacaStub()

    def measure(bench: FleetBench) -> None:
        fleet, books, found = bench.fleet, bench.books, bench.services
        warm_up(fleet, books, args)
        for label, value in machine(books, found.broker_url, found.durability):
            print(f"{label:22} {value}")
        print(f"fleet: API x1, {args.workers} worker(s) x concurrency {args.concurrency}, Alpaca stub")
        print(f"sending {args.rate}/s for {args.seconds} s over {args.symbols} symbols ...", flush=True)
        cpu = CpuRoles(fleet_roles(fleet, found.server_pids))
        print_figures(args, run_trickle(fleet, books, stub, args, cpu))

    with stub:
        return run_fleet_bench(args, measure, env=alpaca_env(stub))


def alpaca_env(stub: AlpacaStub) -> dict[str, str]:
    """The fleet's settings for the Alpaca adapter against the (started) stub."""
    return {
        "DUSTPAN_BROKERAGE": "alpaca",
        "DUSTPAN_ALPACA_TRADING_URL": stub.url,
        "DUSTPAN_ALPACA_DATA_URL": stub.url,
        "DUSTPAN_ALPACA_KEY_ID": stub.key_id,
        "DUSTPAN_ALPACA_SECRET_KEY": stub.secret_key,
    }


if __name__ == "__main__":
    raise SystemExit(main())
