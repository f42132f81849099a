"""Hot-symbol ingestion throughput, end to end: signed webhooks -> API -> PostgreSQL -> Celery.

Measures trades/s from the first webhook sent until the last trade is committed as
``accumulated``, for two shapes on ONE hot symbol: many trades per webhook and one trade
per webhook. Each shape runs on a freshly truncated database against the real API and
real Celery workers (``python -m workers.cli ...``), as a user runs them.

    python bench/ingest_throughput.py [--trades N] [--single-trades N] [--clients C]
        [--workers W] [--concurrency K] [--database-url URL --broker-url URL]

Without URLs it starts an embedded PostgreSQL (fsync on) and Redis in a temporary
directory. With URLs it creates (and drops) a database of its own on that server.
Prints figures; never asserts on time. Exits non-zero only if something broke.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support is not installed; it lives next to bench/

import httpx  # noqa: E402
import psutil  # noqa: E402
import psycopg2  # noqa: E402
import redis  # noqa: E402
from psycopg2 import sql  # noqa: E402

from tests.support.feed import make_trades, post_trades  # noqa: E402
from tests.support.fleet import Fleet, wait_for  # noqa: E402
from workers.cli import migrate  # noqa: E402

WEBHOOK_SECRET = "bench-webhook-secret"
API_TOKEN = "bench-api-token"
POLL_SECONDS = 0.05


class BenchError(Exception):
    """Something broke: the run's figures would mean nothing."""


@dataclass
class Shape:
    name: str
    symbol: str
    trades: int
    per_request: int


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
    tasks: Counter[str] = field(default_factory=Counter)  # Celery tasks that succeeded meanwhile

    @property
    def trades_per_second(self) -> float:
        return self.shape.trades / self.accumulated_seconds

    def latency(self, percentile: int) -> float:
        ordered = sorted(self.latencies_ms)
        rank = max(1, -(-percentile * len(ordered) // 100))  # nearest rank
        return ordered[rank - 1]


class Books:
    """One autocommit connection for setup and polling.

    Autocommit, so that between statements the bench holds no snapshot and no lock (TRUNCATE
    and the workers never wait for it); one connection, so that polling does not fork a
    PostgreSQL backend 20 times a second and bill it to the server.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None

    def value(self, query: str) -> Any:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg2.connect(self.url)
            self._connection.autocommit = True
        with self._connection.cursor() as cursor:
            cursor.execute(query)
            row = cursor.fetchone()
            return None if row is None else row[0]

    def accumulated(self) -> int:
        return int(self.value("SELECT count(*) FROM trades WHERE status = 'accumulated'"))

    def truncate_all(self) -> None:
        tables = self.value(
            "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        if tables:
            self.value(f"TRUNCATE {tables} RESTART IDENTITY CASCADE; SELECT 1")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


# -- services -------------------------------------------------------------------------------


@dataclass
class Services:
    database_url: str
    broker_url: str
    durability: str
    server_pids: dict[str, int]  # embedded servers only: their CPU is reported too


@contextmanager
def services(args: argparse.Namespace, scratch: Path) -> Iterator[Services]:
    pids: dict[str, int] = {}
    with ExitStack() as stack:
        admin_url = args.database_url
        if not admin_url:
            from workers.embedded import EmbeddedPostgres

            postgres = EmbeddedPostgres(scratch / "pg", fsync=not args.no_fsync)
            stack.callback(postgres.stop)
            postgres.start()
            admin_url = postgres.url
            pids["postgres"] = postgres.pid or 0
        broker_url = args.broker_url
        if not broker_url:
            from workers.embedded import EmbeddedRedis

            redis_server = EmbeddedRedis(scratch / "redis", persist=True)
            stack.callback(redis_server.stop)
            redis_server.start()
            broker_url = redis_server.url
            pids["redis"] = redis_server.pid or 0
        database_url = _create_database(admin_url, f"dustpan_bench_{uuid.uuid4().hex[:8]}")
        stack.callback(_drop_database, admin_url, database_url)
        migrate(database_url)
        durability = _durability(database_url, embedded=not args.database_url)
        yield Services(database_url, broker_url, durability, pids)


def _admin_cursor_run(admin_url: str, statement: sql.Composable) -> None:
    connection = psycopg2.connect(admin_url)
    connection.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def _create_database(admin_url: str, name: str) -> str:
    _admin_cursor_run(admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{admin_url.rpartition('/')[0]}/{name}"


def _drop_database(admin_url: str, database_url: str) -> None:
    name = sql.Identifier(database_url.rpartition("/")[2])
    _admin_cursor_run(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def _durability(database_url: str, embedded: bool) -> str:
    books = Books(database_url)
    names = ("fsync", "synchronous_commit", "full_page_writes")
    try:
        settings = ", ".join(f"{name}={books.value(f'SHOW {name}')}" for name in names)
    finally:
        books.close()
    return f"{'embedded' if embedded else 'given server'}, {settings}"


def fleet_env(found: Services, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(
        {
            "DUSTPAN_DATABASE_URL": found.database_url,
            "DUSTPAN_BROKER_URL": found.broker_url,
            "DUSTPAN_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DUSTPAN_API_TOKEN": API_TOKEN,
            "DUSTPAN_DATA_DIR": str(data_dir),
        }
    )
    return env


# -- one shape ------------------------------------------------------------------------------


def run_shape(
    fleet: Fleet, books: Books, shape: Shape, clients: int, timeout: float, seed: int, roles: CpuRoles
) -> Result:
    settle(books, fleet.env["DUSTPAN_BROKER_URL"])
    books.truncate_all()
    trades = make_trades(shape.symbol, shape.trades, random.Random(seed), prefix=f"{shape.symbol}-{seed}")
    batches = [trades[i : i + shape.per_request] for i in range(0, len(trades), shape.per_request)]
    shares = [batches[i::clients] for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    finished = [0.0] * clients
    stop = threading.Event()

    def post_share(n: int) -> None:
        with httpx.Client(base_url=fleet.api_url, timeout=60) as client:
            for batch in shares[n]:
                if stop.is_set():
                    return
                sent = time.perf_counter()
                answer = post_trades(client, WEBHOOK_SECRET, batch)
                latencies[n].append((time.perf_counter() - sent) * 1000)
                if answer["accepted"] != len(batch):
                    raise BenchError(f"webhook accepted {answer['accepted']} of {len(batch)}: {answer}")
        finished[n] = time.perf_counter()

    pool = ThreadPoolExecutor(clients, thread_name_prefix="client")
    try:
        log_offsets = _log_offsets(fleet)
        cpu_before = roles.snapshot()
        start = time.perf_counter()
        futures = [pool.submit(post_share, n) for n in range(clients)]
        done_at = _wait_accumulated(books, shape.trades, futures, start + timeout)
        cpu_after = roles.snapshot()
        tasks = _tasks_succeeded(fleet, log_offsets)
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
    return Result(
        shape,
        requests=len(batches),
        clients=clients,
        posted_seconds=max(finished) - start,
        accumulated_seconds=done_at - start,
        latencies_ms=[ms for share in latencies for ms in share],
        executions=int(books.value("SELECT count(*) FROM executions")),
        cpu_seconds={role: cpu_after[role] - cpu_before[role] for role in cpu_before},
        tasks=tasks,
    )


def _wait_accumulated(books: Books, expected: int, futures: list[Future[None]], deadline: float) -> float:
    """The moment the poll first saw every trade accumulated; raises if a client failed or time ran out."""
    count = 0
    while time.perf_counter() < deadline:
        for future in futures:
            if future.done() and future.exception() is not None:
                raise BenchError(f"a webhook client failed: {future.exception()!r}")
        count = books.accumulated()
        if count >= expected:
            now = time.perf_counter()
            for future in futures:
                future.result()  # every client has finished: the last trade is stored
            return now
        time.sleep(POLL_SECONDS)
    raise BenchError(f"only {count} of {expected} trades accumulated before the timeout")


# Celery's own INFO line for every task run (celery.app.trace.LOG_SUCCESS).
TASK_SUCCEEDED = re.compile(r"Task ([\w.]+)\[[^\]]+\] succeeded")


def _log_offsets(fleet: Fleet) -> dict[Path, int]:
    return {w.log_path: w.log_path.stat().st_size if w.log_path.exists() else 0 for w in fleet.workers}


def _tasks_succeeded(fleet: Fleet, offsets: dict[Path, int]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path, offset in offsets.items():
        with path.open("rb") as log:
            log.seek(offset)
            counts.update(TASK_SUCCEEDED.findall(log.read().decode(errors="replace")))
    return counts


def settle(books: Books, broker_url: str, timeout: float = 60) -> None:
    """Let the previous run's executions reach the broker, so TRUNCATE pulls no rows from under a task."""
    broker = redis.Redis.from_url(broker_url)

    def idle() -> bool:
        queued = sum(int(broker.llen(queue)) for queue in ("ingestion", "execution", "ops"))
        unacked = int(broker.hlen("unacked"))  # kombu's Redis transport: delivered, not yet acked
        in_flight = books.value("SELECT count(*) FROM executions WHERE status IN ('pending', 'submitted')")
        return queued + unacked + int(in_flight) == 0

    try:
        wait_for(idle, timeout, "the previous run's tasks to finish", interval=0.2)
    except AssertionError as exc:
        print(f"note: {exc}; going on", file=sys.stderr)
    finally:
        broker.close()


def warm_up(fleet: Fleet, books: Books, shapes: list[Shape]) -> None:
    """Imports, connection pools, statement caches and first task runs, outside the measurement."""
    books.truncate_all()
    sent = 0
    with httpx.Client(base_url=fleet.api_url, timeout=60) as client:
        for shape in shapes:
            for n in range(10):
                prefix = f"WARM-{shape.per_request}-{n}"
                post_trades(client, WEBHOOK_SECRET, make_trades("WARM", shape.per_request, random.Random(n), prefix))
                sent += shape.per_request
    wait_for(lambda: books.accumulated() == sent, 120, "the warm-up trades to be accumulated")


# -- CPU accounting -----------------------------------------------------------------------


class CpuRoles:
    """CPU seconds (user + system) per role, each role a set of process trees.

    A process's own time plus the time of children it has reaped (PostgreSQL backends
    that exited, replaced pool processes), plus its live descendants: a difference of two
    snapshots is the CPU the role burnt in between, wherever it ran.
    """

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = roles

    def snapshot(self) -> dict[str, float]:
        return {role: sum(_tree_cpu(pid) for pid in pids) for role, pids in self.roles.items()}


def _tree_cpu(pid: int) -> float:
    if pid == os.getpid():  # the clients and the poller; children here are the fleet, counted apart
        times = os.times()
        return times.user + times.system
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for member in members:
        try:
            t = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_roles(fleet: Fleet, found: Services) -> CpuRoles:
    roles = {"api": [fleet.api.pid] if fleet.api else [], "workers": [w.pid for w in fleet.workers]}
    roles.update({name: [pid] for name, pid in found.server_pids.items() if pid})
    roles["bench clients"] = [os.getpid()]
    return CpuRoles(roles)


# -- report ---------------------------------------------------------------------------------


def machine(books: Books, found: Services) -> list[tuple[str, str]]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    broker = redis.Redis.from_url(found.broker_url)
    try:
        redis_version = str(broker.info("server").get("redis_version", "?"))
    finally:
        broker.close()
    return [
        ("nproc", f"{len(os.sched_getaffinity(0))} ({cpu})"),
        ("python", f"{platform.python_version()} ({platform.platform()})"),
        ("postgresql", str(books.value("SELECT version()"))),
        ("postgresql durability", found.durability),
        ("redis", redis_version),
    ]


def _other_tasks(tasks: Counter[str]) -> str:
    others = sum(n for name, n in tasks.items() if name != "ingestion.accumulate")
    return f"{others:,}"


def _cpu_cell(role: str) -> Callable[[Result], str]:
    return lambda r: f"{r.cpu_seconds[role]:.1f}"


def print_results(results: list[Result], args: argparse.Namespace) -> None:
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("trades", lambda r: f"{r.shape.trades:,}"),
        ("trades per request", lambda r: f"{r.shape.per_request}"),
        ("requests", lambda r: f"{r.requests:,}"),
        ("clients", lambda r: f"{r.clients}"),
        ("seconds to all posted", lambda r: f"{r.posted_seconds:.2f}"),
        ("seconds to all accumulated", lambda r: f"{r.accumulated_seconds:.2f}"),
        ("trades/s end to end", lambda r: f"{r.trades_per_second:,.0f}"),
        ("requests/s while posting", lambda r: f"{r.requests / r.posted_seconds:,.0f}"),
        ("webhook latency p50 (ms)", lambda r: f"{r.latency(50):.1f}"),
        ("webhook latency p99 (ms)", lambda r: f"{r.latency(99):.1f}"),
        ("executions created", lambda r: f"{r.executions:,}"),
        ("accumulate tasks run", lambda r: f"{r.tasks['ingestion.accumulate']:,}"),
        (
            "trades per accumulate run",
            lambda r: f"{r.shape.trades / max(1, r.tasks['ingestion.accumulate']):,.1f}",
        ),
        ("other tasks run", lambda r: _other_tasks(r.tasks)),
    ]
    cores = len(os.sched_getaffinity(0))
    for role in results[0].cpu_seconds:
        rows.append((f"CPU s: {role}", _cpu_cell(role)))
    rows.append(
        (
            f"CPU busy, roles above ({cores} cores)",
            lambda r: f"{sum(r.cpu_seconds.values()) / (r.accumulated_seconds * cores):.0%}",
        )
    )
    fleet = f"API x1, {args.workers} worker(s) x concurrency {args.concurrency}"
    print(f"\nfleet: {fleet}, {args.clients} client threads, one hot symbol per shape")
    print(f"\n{'':32}" + "".join(f"{r.shape.name:>16}" for r in results))
    for label, cell in rows:
        print(f"{label:32}" + "".join(f"{cell(r):>16}" for r in results))


# -- main -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--trades", type=int, default=20_000, help="trades in the batched run")
    parser.add_argument("--batch", type=int, default=100, help="trades per webhook in the batched run")
    parser.add_argument("--single-trades", type=int, default=3_000, help="trades in the 1-per-webhook run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (threads)")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork pool size of each worker")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per shape before giving up")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="embedded PostgreSQL without fsync (to see what durability costs)",
    )
    parser.add_argument("--database-url", help="a PostgreSQL server where the bench may create a database")
    parser.add_argument("--broker-url", help="a Redis for the Celery broker")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("trades", "batch", "single_trades", "clients", "workers", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if bool(args.database_url) != bool(args.broker_url):
        print("note: only one URL given; the other service is embedded", file=sys.stderr)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill: clean up as on Ctrl-C
    shapes = [
        Shape(f"{args.batch}/request", "HOTB", args.trades, args.batch),
        Shape("1/request", "HOTS", args.single_trades, 1),
    ]
    scratch = Path(tempfile.mkdtemp(prefix="dustpan-bench-"))
    try:
        with services(args, scratch) as found:
            logs = scratch / "logs"
            logs.mkdir()
            fleet = Fleet(fleet_env(found, scratch / "data"), logs)
            books = Books(found.database_url)
            try:
                print(f"starting API and {args.workers} worker(s) (logs in {logs}) ...", flush=True)
                fleet.start_api()
                for _ in range(args.workers):
                    fleet.start_worker(concurrency=args.concurrency)
                warm_up(fleet, books, shapes)
                roles = cpu_roles(fleet, found)
                for label, value in machine(books, found):
                    print(f"{label:22} {value}")
                results = []
                for shape in shapes:
                    print(f"running {shape.name}: {shape.trades:,} trades on {shape.symbol} ...", flush=True)
                    results.append(run_shape(fleet, books, shape, args.clients, args.timeout, args.seed, roles))
                print_results(results, args)
            except Exception as exc:
                if not isinstance(exc, BenchError | AssertionError):
                    traceback.print_exc()
                print(f"\nbench failed: {exc}", file=sys.stderr)
                _print_log_tails(fleet)
                return 1
            finally:
                books.close()
                fleet.stop()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _print_log_tails(fleet: Fleet) -> None:
    for process in [fleet.api, *fleet.workers]:
        if process is not None:
            print(f"--- {process.name} log (tail) ---\n{process.log_tail(20)}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
