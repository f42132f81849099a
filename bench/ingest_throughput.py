"""Hot-symbol ingestion throughput, end to end: signed webhooks -> API -> PostgreSQL -> Celery.

Measures trades/s from the first webhook sent until the last trade is committed as
``accumulated``, for two shapes on ONE hot symbol: many trades per webhook and one trade
per webhook. Each shape runs on a freshly truncated database against the real API and
real Celery workers (``python -m workers.cli ...``), as a user runs them. In the same run,
on the same machine and servers, it measures two ceilings and prints each figure as a ratio:

(a) a no-op Celery task (``bench/noop_app.py``): tasks/s through the same broker, with
    workers started by the same code, in the same number, concurrency and pool;
(b) PostgreSQL alone (``bench/_pg_ceiling.py``): the same webhook INSERTs and accumulation
    statements issued directly with psycopg2 from as many connections as webhook clients.

Targets on a 2-core machine: >= 10,000 trades/s at 100 trades per webhook, >= 1,000 trades/s
(and at least the no-op task rate) at 1 trade per webhook, worker RSS <= 200 MB.

    python bench/ingest_throughput.py [--trades N] [--single-trades N] [--clients C]
        [--workers W] [--concurrency K] [--noop-tasks N] [--database-url URL --broker-url URL]

Without URLs it starts an embedded PostgreSQL (fsync on) and Redis in a temporary
directory. With URLs it creates (and drops) a database of its own on that server.
Prints figures; never asserts on time. Exits non-zero only if something broke.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support is not installed; it lives next to bench/

import httpx  # noqa: E402

from bench._fleet_bench import (  # noqa: E402
    WEBHOOK_SECRET,
    FleetBench,
    add_fleet_options,
    require_positive,
    run_fleet_bench,
)
from bench._measure import (  # noqa: E402
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
from bench._noop_ceiling import NoopCeiling, run_noop_ceiling  # noqa: E402
from bench._pg_ceiling import PgCeiling, run_pg_ceiling  # noqa: E402
from bench._webhook_client import ClosedLoopRun, Trades, post_closed_loop  # noqa: E402
from tests.support.feed import make_trades, post_trades  # noqa: E402
from tests.support.fleet import Fleet, wait_for  # noqa: E402

POLL_SECONDS = 0.05
FLEET_QUEUES = ("ingestion", "execution", "ops")
TARGET_BATCHED = 10_000  # trades/s at 100 trades per webhook, 2 cores
TARGET_SINGLE = 1_000  # trades/s at 1 trade per webhook, and at least the no-op task rate
TARGET_RSS_MB = 200
ACCUMULATE = "ingestion.accumulate"


@dataclass
class Shape:
    name: str
    symbol: str
    trades: int
    per_request: int

    def batches(self, seed: int) -> list[Trades]:
        trades = make_trades(self.symbol, self.trades, random.Random(seed), prefix=f"{self.symbol}-{seed}")
        return [trades[i : i + self.per_request] for i in range(0, len(trades), self.per_request)]

    @property
    def target(self) -> int:
        return TARGET_SINGLE if self.per_request == 1 else TARGET_BATCHED


@dataclass
class Result:
    shape: Shape
    requests: int
    clients: int
    posted_seconds: float
    accumulated_seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    executions: int = 0
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per role, first post to accumulated
    task_runs: dict[str, list[float]] = field(default_factory=dict)  # run seconds of the tasks that succeeded
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    pg: PgCeiling | None = None

    @property
    def trades_per_second(self) -> float:
        return self.shape.trades / self.accumulated_seconds

    @property
    def accumulate_runs(self) -> list[float]:
        return self.task_runs.get(ACCUMULATE, [])


# -- one shape ------------------------------------------------------------------------------


def run_shape(fleet: Fleet, books: Books, shape: Shape, args: argparse.Namespace, cpu: CpuRoles) -> Result:
    settle(books, fleet.env["DUSTPAN_BROKER_URL"], FLEET_QUEUES)
    books.truncate_all()
    batches = shape.batches(args.seed)
    shares = [batches[i :: args.clients] for i in range(args.clients)]
    assert fleet.api is not None
    with (
        ThreadPoolExecutor(1, thread_name_prefix="clients") as pool,
        PeakRss(fleet.api.pid, [w.pid for w in fleet.workers]) as rss,
    ):
        log_offsets = log_offsets_of(fleet)
        cpu_before = cpu.snapshot()
        start = time.perf_counter()
        clients = pool.submit(post_closed_loop, fleet.api_url, WEBHOOK_SECRET, shares)
        done_at = _wait_accumulated(books, shape.trades, clients, start + args.timeout)
        cpu_after = cpu.snapshot()
        run = clients.result()
    return Result(
        shape,
        requests=len(batches),
        clients=args.clients,
        posted_seconds=run.finished - start,
        accumulated_seconds=done_at - start,
        latencies_ms=run.latencies_ms,
        executions=int(books.value("SELECT count(*) FROM executions")),
        cpu_seconds={role: cpu_after[role] - cpu_before[role] for role in cpu_before},
        task_runs=task_run_seconds(fleet, log_offsets),
        peak_rss_mb=dict(rss.peaks),
    )


def run_pg(fleet: Fleet, books: Books, shape: Shape, args: argparse.Namespace) -> PgCeiling:
    """Ceiling (b) for the shape: the same trades, straight into a truncated database."""
    settle(books, fleet.env["DUSTPAN_BROKER_URL"], FLEET_QUEUES)
    books.truncate_all()
    ceiling = run_pg_ceiling(books.url, shape.symbol, shape.batches(args.seed), args.clients)
    books.truncate_all()
    return ceiling


def _wait_accumulated(books: Books, expected: int, clients: Future[ClosedLoopRun], deadline: float) -> float:
    """The moment the poll first saw every trade accumulated; raises if a client failed or time ran out."""
    count = 0
    while time.perf_counter() < deadline:
        if clients.done() and clients.exception() is not None:
            raise BenchError(f"a webhook client failed: {clients.exception()!r}")
        count = books.accumulated()
        if count >= expected:
            return time.perf_counter()
        time.sleep(POLL_SECONDS)
    raise BenchError(f"only {count} of {expected} trades accumulated before the timeout")


def warm_up(fleet: Fleet, books: Books, shapes: list[Shape]) -> None:
    """Imports, connection pools, statement caches and first task runs, outside the measurement.

    One batch goes through ``post_trades`` (the tests' and the demo's signed post), the rest
    through the bench's own client: both must be accepted the same way.
    """
    books.truncate_all()
    batches = [
        make_trades("WARM", shape.per_request, random.Random(n), f"WARM-{shape.per_request}-{n}")
        for shape in shapes
        for n in range(10)
    ]
    with httpx.Client(base_url=fleet.api_url, timeout=60) as client:
        answer = post_trades(client, WEBHOOK_SECRET, batches[0])
        if answer["accepted"] != len(batches[0]):
            raise BenchError(f"warm-up webhook refused: {answer}")
    post_closed_loop(fleet.api_url, WEBHOOK_SECRET, [batches[1:]])
    sent = sum(len(batch) for batch in batches)
    wait_for(lambda: books.accumulated() == sent, 120, "the warm-up trades to be accumulated")


# -- report ---------------------------------------------------------------------------------


def _p50_max(seconds: list[float]) -> str:
    return f"{percentile(seconds, 50) * 1000:.0f} / {max(seconds, default=0) * 1000:.0f}"


def _ratio(value: float, ceiling: float) -> str:
    return f"{value / ceiling:.2f}x" if ceiling else "-"


def print_results(results: list[Result], noop: NoopCeiling | None, args: argparse.Namespace) -> None:
    cores = len(os.sched_getaffinity(0))
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("trades", lambda r: f"{r.shape.trades:,}"),
        ("trades per request", lambda r: f"{r.shape.per_request}"),
        ("requests", lambda r: f"{r.requests:,}"),
        ("client connections", lambda r: f"{r.clients}"),
        ("seconds to all posted", lambda r: f"{r.posted_seconds:.2f}"),
        ("seconds to all accumulated", lambda r: f"{r.accumulated_seconds:.2f}"),
        ("trades/s end to end", lambda r: f"{r.trades_per_second:,.0f}"),
        ("requests/s while posting", lambda r: f"{r.requests / r.posted_seconds:,.0f}"),
        ("webhook latency p50 (ms)", lambda r: f"{percentile(r.latencies_ms, 50):.1f}"),
        ("webhook latency p99 (ms)", lambda r: f"{percentile(r.latencies_ms, 99):.1f}"),
        ("executions created", lambda r: f"{r.executions:,}"),
        ("accumulate tasks run", lambda r: f"{len(r.accumulate_runs):,}"),
        ("trades per accumulate run", lambda r: f"{r.shape.trades / max(1, len(r.accumulate_runs)):,.1f}"),
        ("accumulate run p50 / max (ms)", lambda r: _p50_max(r.accumulate_runs)),
        ("other tasks run", lambda r: f"{sum(len(v) for t, v in r.task_runs.items() if t != ACCUMULATE):,}"),
    ]
    for role in results[0].cpu_seconds:
        rows.append((f"CPU s: {role}", lambda r, role=role: f"{r.cpu_seconds[role]:.1f}"))  # type: ignore[misc]
    rows.append(
        (
            f"CPU busy, roles above ({cores} cores)",
            lambda r: f"{sum(r.cpu_seconds.values()) / (r.accumulated_seconds * cores):.0%}",
        )
    )
    for kind in ("api", "worker main", "pool child"):
        rows.append((f"peak RSS MB: {kind}", lambda r, kind=kind: f"{r.peak_rss_mb[kind]:.0f}"))  # type: ignore[misc]
    rows += _ceiling_rows(noop)
    fleet = f"API x1, {args.workers} worker(s) x concurrency {args.concurrency}"
    print(f"\nfleet: {fleet}, {args.clients} client connections (asyncio, keep-alive), one hot symbol per shape")
    if noop is not None:
        cpu = ", ".join(f"{role} {seconds:.1f}" for role, seconds in noop.cpu_seconds.items())
        rss = ", ".join(f"{kind} {mb:.0f}" for kind, mb in noop.peak_rss_mb.items())
        print(
            f"ceiling (a), no-op Celery task: {noop.tasks:,} tasks from {noop.producers} producer threads to"
            f" {noop.workers} worker(s) x concurrency {noop.concurrency}\n"
            f"    all published in {noop.published_seconds:.2f} s, all run in {noop.ran_seconds:.2f} s"
            f" = {noop.tasks_per_second:,.0f} tasks/s; CPU s: {cpu}; peak RSS MB: {rss}"
        )
    print(f"\n{'':40}" + "".join(f"{r.shape.name:>16}" for r in results))
    for label, cell in rows:
        print(f"{label:40}" + "".join(f"{cell(r):>16}" for r in results))
    worst = max(max(r.peak_rss_mb["worker main"], r.peak_rss_mb["pool child"]) for r in results)
    print(f"\nworker peak RSS {worst:.0f} MB (target <= {TARGET_RSS_MB} MB per process)")


def _ceiling_rows(noop: NoopCeiling | None) -> list[tuple[str, Callable[[Result], str]]]:
    rows: list[tuple[str, Callable[[Result], str]]] = []
    if noop is not None:
        rows += [
            ("ceiling (a): no-op Celery tasks/s", lambda r: f"{noop.tasks_per_second:,.0f}"),
            ("end to end trades/s / (a)", lambda r: _ratio(r.trades_per_second, noop.tasks_per_second)),
            (
                "end to end requests/s / (a)",
                lambda r: _ratio(r.requests / r.accumulated_seconds, noop.tasks_per_second),
            ),
        ]
    rows += [
        ("ceiling (b): PostgreSQL direct trades/s", lambda r: f"{r.pg.trades_per_second:,.0f}" if r.pg else "-"),
        ("  (b) webhook INSERTs alone, trades/s", lambda r: f"{r.pg.inserted_per_second:,.0f}" if r.pg else "-"),
        ("  (b) accumulate runs / executions", lambda r: f"{r.pg.accumulate_runs}/{r.pg.executions}" if r.pg else "-"),
        ("end to end trades/s / (b)", lambda r: _ratio(r.trades_per_second, r.pg.trades_per_second) if r.pg else "-"),
        ("target trades/s", lambda r: f">= {r.shape.target:,}"),
        ("end to end trades/s / target", lambda r: _ratio(r.trades_per_second, r.shape.target)),
    ]
    return rows


# -- main -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--trades", type=int, default=20_000, help="trades in the batched run")
    parser.add_argument("--batch", type=int, default=100, help="trades per webhook in the batched run")
    parser.add_argument("--single-trades", type=int, default=3_000, help="trades in the 1-per-webhook run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent webhook connections (and PostgreSQL ones)")
    parser.add_argument("--noop-tasks", type=int, default=5_000, help="tasks in the no-op Celery ceiling")
    parser.add_argument("--no-ceilings", action="store_true", help="end-to-end figures only")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per shape before giving up")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="embedded PostgreSQL without fsync (to see what durability costs)",
    )
    add_fleet_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    require_positive(
        parser, args, ("trades", "batch", "single_trades", "clients", "workers", "concurrency", "noop_tasks")
    )
    if bool(args.database_url) != bool(args.broker_url):
        print("note: only one URL given; the other service is embedded", file=sys.stderr)
    shapes = [
        Shape(f"{args.batch}/request", "HOTB", args.trades, args.batch),
        Shape("1/request", "HOTS", args.single_trades, 1),
    ]

    def measure(bench: FleetBench) -> None:
        fleet, books, found = bench.fleet, bench.books, bench.services
        warm_up(fleet, books, shapes)
        cpu = CpuRoles(fleet_roles(fleet, found.server_pids))
        for label, value in machine(books, found.broker_url, found.durability):
            print(f"{label:22} {value}")
        results = []
        for shape in shapes:
            print(f"running {shape.name}: {shape.trades:,} trades on {shape.symbol} ...", flush=True)
            results.append(run_shape(fleet, books, shape, args, cpu))
            if not args.no_ceilings:
                print(f"  ceiling (b): the same SQL straight into PostgreSQL ({shape.name}) ...", flush=True)
                results[-1].pg = run_pg(fleet, books, shape, args)
        noop = None
        if not args.no_ceilings:
            print(f"ceiling (a): {args.noop_tasks:,} no-op Celery tasks ...", flush=True)
            noop = run_noop_ceiling(
                fleet.env,
                bench.logs,
                found.server_pids,
                args.noop_tasks,
                args.clients,
                args.workers,
                args.concurrency,
                args.timeout,
            )
        print_results(results, noop, args)

    return run_fleet_bench(args, measure, fsync=not args.no_fsync)


if __name__ == "__main__":
    raise SystemExit(main())
