"""What history costs: audit, report and one webhook->order probe with N trades already stored.

    .venv/bin/python bench/history_scale.py [--sizes 0,5000000,20000000] [--runs 5] [--probes 20]
        [--database-url URL] [--broker-url URL]

For each N it creates a fresh database, fills it by SQL with N accumulated trades over 50
symbols (20 trades of 0.05 share per filled one-share hedge: N / 20 executions, N
contributions, about a year of history), derives the running totals from the rows, lets the
background verifier finish one pass (its time is printed: that is the daily background cost),
then times, median of ``--runs`` taken round robin over the sizes (so that a change of load on
a shared machine moves every size alike):

- ``dustpan audit --json`` and ``dustpan report --json``, each a fresh process (start-up included),
- the audit in process (``tasks.audit.audit_books``) and, as the "before" figure, the full-scan
  audit this code replaced (the same SQL over every row),
- ``--probes`` one-share probe trades, one at a time, signed webhook -> order at the paper
  brokerage (API + one worker on this database), p50 / p99,

and prints them side by side with the ratio to N = 0. Every database lives until the end (about
0.42 GB per million trades), then is dropped. Prints figures; never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree, even beside an editable install

import httpx
import psycopg2

from bench._measure import percentile
from bench._servers import create_database, drop_database
from models.db import UnitOfWork, dispose_engines
from tasks.audit import audit_books
from tasks.audit_verifier import run_pass
from tasks.totals import fold_deltas
from tests.support.feed import post_trades
from tests.support.fleet import Fleet, wait_for
from tests.support.totals import FULL_RECOMPUTATION
from workers.cli import migrate

SECRET, TOKEN = "bench-webhook-secret", "bench-api-token"
ROOT = Path(__file__).resolve().parents[1]
# `python -m workers.cli` from this tree is the `dustpan` console script of this tree.
DUSTPAN = [sys.executable, "-m", "workers.cli"]

# Trades n = 20k .. 20k+19 of 0.05 share made execution k (one share) of symbol S<k mod 50>.
# Filled behind the triggers (replica role: no FK checks either); the totals are then derived
# from the rows in one statement, as migration 0007 does for an existing database.
FILL = """
SET session_replication_role = replica;
INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, filled_quantity, average_price,
                        source, created_at, updated_at, submitted_at)
SELECT md5('e' || k)::uuid, 'S' || lpad((k %% 50)::text, 2, '0'), 'buy', 1, 'filled', 'dp-hist-' || k, 1, 100,
       'hedge', at, at, at
FROM generate_series(0, %(n)s / 20 - 1) AS k,
     LATERAL (SELECT now() - interval '365 days' * (1 - k * 20.0 / %(n)s)) t(at);
INSERT INTO trades (id, symbol, side, quantity, price, executed_at, received_at, content_hash, status,
                    accumulated_at, open_quantity)
SELECT 'h' || n, 'S' || lpad(((n / 20) %% 50)::text, 2, '0'), 'buy', 0.05, 100, at, at, md5(n::text),
       'accumulated', at, 0
FROM generate_series(0, %(n)s - 1) AS n,
     LATERAL (SELECT now() - interval '365 days' * (1 - n * 1.0 / %(n)s)) t(at);
INSERT INTO contributions (execution_id, trade_id, quantity)
SELECT md5('e' || (n / 20))::uuid, 'h' || n, 0.05 FROM generate_series(0, %(n)s - 1) AS n;
INSERT INTO accumulators (symbol, net_quantity, last_price)
SELECT 'S' || lpad(s::text, 2, '0'), 0, 100 FROM generate_series(0, 49) AS s;
SET session_replication_role = origin;
"""
TOTALS_FROM_ROWS = (
    f"INSERT INTO symbol_total_deltas (symbol, trades_applied, filled, in_flight, returned) {FULL_RECOMPUTATION};"
    "INSERT INTO book_total_deltas (kind, symbol, side, status, row_count, quantity, filled)"
    " SELECT 'trade', symbol, side, status, count(*), sum(quantity), 0 FROM trades GROUP BY 2, 3, 4;"
    "INSERT INTO book_total_deltas (kind, symbol, side, status, row_count, quantity, filled)"
    " SELECT 'execution', symbol, side, status, count(*), sum(quantity), sum(filled_quantity)"
    " FROM executions GROUP BY 2, 3, 4"
)

# The audit as it was before the running totals: every trade, execution and contribution, each run.
FULL_SCAN_AUDIT = """
WITH t AS (SELECT symbol, sum(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END)
                  FILTER (WHERE status = 'accumulated') AS total, sum(open_quantity) AS open,
                  count(*) FILTER (WHERE status = 'received') AS waiting FROM trades GROUP BY symbol),
     e AS (SELECT symbol, sum(CASE WHEN side = 'buy' THEN filled_quantity ELSE -filled_quantity END) AS executed
           FROM executions WHERE source = 'hedge' GROUP BY symbol)
SELECT * FROM t LEFT JOIN e USING (symbol)
UNION ALL
SELECT e.symbol, NULL, NULL, NULL, NULL FROM executions e LEFT JOIN contributions c ON c.execution_id = e.id
WHERE e.source = 'hedge' GROUP BY e.symbol, e.id, e.side, e.quantity
HAVING coalesce(sum(c.quantity), 0) <> CASE WHEN e.side = 'buy' THEN e.quantity ELSE -e.quantity END
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,5000000,20000000")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--database-url", help="a server where the bench may create databases")
    parser.add_argument("--broker-url")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with servers(args.database_url, args.broker_url) as (admin_url, broker_url, scratch), ExitStack() as stack:
        books = {
            n: Book(stack.enter_context(fresh_database(admin_url)), broker_url, scratch / f"n{n}", n) for n in sizes
        }
        results = {n: prepare(book) for n, book in books.items()}
        # Round robin over the sizes, run after run: a load change on the shared machine moves
        # every size alike instead of the one measured at that moment.
        samples: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}
        for _ in range(args.runs):
            for n, book in books.items():
                for name, action in book.timed_actions().items():
                    samples[n].setdefault(name, []).append(elapsed_ms(action))
        for n, book in books.items():
            results[n] |= {name: round(statistics.median(values), 1) for name, values in samples[n].items()}
            results[n]["full-scan audit (before) ms"] = median_ms(lambda b=book: sql(b.url, FULL_SCAN_AUDIT), 3)
            results[n]["probe p50 ms"], results[n]["probe p99 ms"] = probe(
                book.env, book.url, book.data_dir, args.probes
            )
        print_table(results)


@dataclass
class Book:
    url: str
    broker_url: str
    data_dir: Path
    n: int

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
        return env | {
            "DUSTPAN_DATABASE_URL": self.url,
            "DUSTPAN_BROKER_URL": self.broker_url,
            "DUSTPAN_DATA_DIR": str(self.data_dir),
        }

    def timed_actions(self) -> dict[str, Callable[[], object]]:
        uow = UnitOfWork(self.url)
        return {
            "audit in process ms": lambda: audit_books(uow, Decimal(1), datetime.now(UTC)),
            "dustpan audit ms": lambda: cli(self.env, "audit", "--json"),
            "dustpan report ms": lambda: cli(self.env, "report", "--json"),
            "dustpan --help ms (start-up)": lambda: cli(self.env, "--help"),
        }


def prepare(book: Book) -> dict[str, float | str]:
    """Fill, derive the totals, let the verifier finish a pass: the steady state measured."""
    print(f"N = {book.n:,}: filling ...", flush=True)
    figures: dict[str, float | str] = {"fill s": timed(lambda: fill(book.url, book.n))}
    uow = UnitOfWork(book.url)
    figures["verifier pass s"] = timed(lambda: run_pass(uow, datetime.now(UTC), chunk_rows=200_000))
    figures["database MB"] = round(database_bytes(book.url) / 1e6)
    figures["audit ok"] = str(audit_books(uow, Decimal(1), datetime.now(UTC)).ok)
    return figures


@contextmanager
def servers(database_url: str | None, broker_url: str | None) -> Iterator[tuple[str, str, Path]]:
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dustpan-history-")))
        if not database_url:
            from workers.embedded import EmbeddedPostgres

            postgres = EmbeddedPostgres(scratch / "pg")
            stack.callback(postgres.stop)
            postgres.start()
            database_url = postgres.url
        if not broker_url:
            from workers.embedded import EmbeddedRedis

            redis_server = EmbeddedRedis(scratch / "redis")
            stack.callback(redis_server.stop)
            redis_server.start()
            broker_url = redis_server.url
        yield database_url, broker_url, scratch


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    url = create_database(admin_url, f"dustpan_history_{uuid.uuid4().hex[:8]}")
    try:
        migrate(url)
        yield url
    finally:
        dispose_engines()
        drop_database(admin_url, url)


def fill(url: str, n: int) -> None:
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            if n:
                cursor.execute(FILL, {"n": n})
                cursor.execute(TOTALS_FROM_ROWS)
            cursor.execute("VACUUM ANALYZE")
    finally:
        connection.close()
    with UnitOfWork(url) as uow:
        fold_deltas(uow.session)
        uow.commit()


def probe(env: dict[str, str], url: str, data_dir: Path, probes: int) -> tuple[float, float]:
    """One-share buys, one at a time: from the signed POST to the paper order's creation."""
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(env | {"DUSTPAN_WEBHOOK_SECRET": SECRET, "DUSTPAN_API_TOKEN": TOKEN}, logs)
    latencies: list[float] = []
    try:
        fleet.start_api()
        fleet.start_worker()
        with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
            for i in range(probes + 5):  # the first five warm the fleet up
                trade = {
                    "id": f"probe-{i}",
                    "symbol": "PRB",
                    "side": "buy",
                    "quantity": "1",
                    "price": "100",
                    "executed_at": datetime.now(UTC).isoformat(),
                }
                sent = time.time()
                post_trades(client, SECRET, [trade])
                wait_for(lambda i=i: orders(url) > i, 30, f"probe {i} to reach the brokerage", interval=0.002)
                if i >= 5:
                    latencies.append(last_order_at(url) - sent)
    finally:
        fleet.stop()
    ms = [x * 1000 for x in latencies]
    return round(percentile(ms, 50), 1), round(percentile(ms, 99), 1)


def orders(url: str) -> int:
    return int(sql(url, "SELECT count(*) FROM paper_orders WHERE symbol = 'PRB'")[0][0])


def last_order_at(url: str) -> float:
    return float(sql(url, "SELECT extract(epoch FROM max(created_at)) FROM paper_orders WHERE symbol = 'PRB'")[0][0])


def sql(url: str, query: str) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(query)
            return list(cursor.fetchall())
    finally:
        connection.close()


def database_bytes(url: str) -> int:
    return int(sql(url, "SELECT pg_database_size(current_database())")[0][0])


def cli(env: dict[str, str], *args: str) -> None:
    done = subprocess.run([*DUSTPAN, *args], env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"dustpan {' '.join(args)} failed: {done.stderr or done.stdout}")


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return round(time.perf_counter() - started, 1)


def elapsed_ms(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def median_ms(action: Callable[[], object], runs: int) -> float:
    return round(statistics.median(elapsed_ms(action) for _ in range(runs)), 1)


def print_table(results: dict[int, dict[str, float | str]]) -> None:
    sizes = sorted(results)
    base = results[sizes[0]]
    print(f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'figure':32}" + "".join(f"{f'N = {n:,}':>22}" for n in sizes))
    for name in base:
        cells = []
        for n in sizes:
            value = results[n][name]
            ratio = ""
            if isinstance(value, float) and isinstance(base[name], float) and base[name] and n != sizes[0]:
                ratio = f" ({value / base[name]:.2f}x)"  # type: ignore[operator]
            cells.append(f"{value}{ratio}")
        print(f"{name:32}" + "".join(f"{c:>22}" for c in cells))
    print(json.dumps({str(n): results[n] for n in sizes}), flush=True)


if __name__ == "__main__":
    main()
