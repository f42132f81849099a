"""One full dust scan over 100,000 holding lots (SPEC 1.3).

    .venv/bin/python bench/dust_scan.py [--lots 100000] [--accounts 10] [--symbols 250] [--repeat 3]
                                        [--database-url URL]

Fills a fresh database (embedded PostgreSQL unless --database-url names a server where the
bench may create a database) with N open holding lots generated inside PostgreSQL, spread
over accounts x symbols, with venue rules of three kinds (whole shares; crypto-like minimum
quantity and step; a minimum notional) and recorded prices. Many lots are dust. Then times
``tasks.dust.scan_dust`` (the code ``dust.scan`` runs) for three cycles: the first moves the
dust into aggregates, the second sells the aggregates the first made ready, the third finds
nothing new. Each repeat uses a fresh database; the first prints its details (counts and
the slowest SQL statements), the end the best and median of every cycle next to the target
(a scan over 100,000 lots in <= 2 s) and to a ceiling measured in the same database just
before: the scan's one read that grows with the lots (every open holding lot, fetched with
psycopg2) and a plain ``SELECT count(*) FROM lots``. Prints figures; never asserts on time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg2
from sqlalchemy import event

from bench._servers import database_url_for, postgres_server
from models.db import UnitOfWork, dispose_engines, engine_for
from tasks.dust import DustScanConfig, ScanReport, scan_dust
from tasks.guards import TradingPolicy
from workers.cli import migrate

# Symbol kinds by index % 3: 0 whole shares (min 1), 1 crypto (step 0.00001, minimum 0.001 to
# 0.008, so that some aggregates stay pending), 2 fractional with a minimum notional of 1.00.
FILL = """
INSERT INTO venue_rules (symbol, tradable, whole_shares, step, min_quantity, min_notional, source)
SELECT 'SYM' || lpad(s::text, 4, '0'), true, s %% 3 = 0,
       CASE s %% 3 WHEN 0 THEN 1 WHEN 1 THEN 0.00001 ELSE 0.001 END,
       CASE s %% 3 WHEN 0 THEN 1 WHEN 1 THEN 0.001 * (1 + s %% 8) ELSE 0 END,
       CASE s %% 3 WHEN 2 THEN 1.00 ELSE 0 END, 'broker'
FROM generate_series(0, %(symbols)s - 1) AS s;
INSERT INTO price_health (symbol, last_price, last_price_at, state)
SELECT 'SYM' || lpad(s::text, 4, '0'), 5 + (s * 37) %% 400, %(now)s, 'closed'
FROM generate_series(0, %(symbols)s - 1) AS s;
INSERT INTO lots (account, symbol, kind, source, quantity, status, created_at, updated_at)
SELECT 'acct-' || (n / %(symbols)s) %% %(accounts)s, 'SYM' || lpad((n %% %(symbols)s)::text, 4, '0'),
       'holding', 'broker',
       CASE (n %% %(symbols)s) %% 3
           WHEN 0 THEN (n %% 4) + (n %% 3) * 0.25                     -- whole shares, some with tails
           WHEN 1 THEN (n %% 23) * 0.00001 + (n %% 5 = 0)::int * 0.000003  -- crypto, all below the minimum
           ELSE 0.001 + (n %% 40) * 0.002                             -- worth about 0.01 to 32 USD
       END,
       'open', %(now)s, %(now)s
FROM generate_series(1, %(lots)s) AS n;
ANALYZE lots;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lots", type=int, default=100_000)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--symbols", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3, help="fresh databases to run the three cycles in")
    parser.add_argument("--database-url", help="a server where the bench may create a database")
    args = parser.parse_args()
    with postgres_server(args.database_url) as admin_url:
        sizes = (args.lots, args.accounts, args.symbols)
        timings = [run(admin_url, *sizes, verbose=i == 0) for i in range(args.repeat)]
        read = statistics.median(t[len(CYCLES)] for t in timings) * 1000
        count = statistics.median(t[len(CYCLES) + 1] for t in timings) * 1000
        print(
            f"\ntarget: one scan over 100,000 lots <= {TARGET_MS:,} ms;"
            " ceilings in the same databases (best of 3 each, median):"
        )
        print(f"  read every open holding lot (psycopg2)  {read:5.0f} ms")
        print(f"  SELECT count(*) FROM lots               {count:5.0f} ms")
        for cycle, what in enumerate(CYCLES):
            runs = [t[cycle] * 1000 for t in timings]
            median = statistics.median(runs)
            print(
                f"cycle {cycle + 1} ({what}){'':<{30 - len(what)}}best {min(runs):5.0f} ms, "
                f"median {median:5.0f} ms over {len(runs)} fresh databases; "
                f"{median / TARGET_MS:.2f}x the target, {median / read:.1f}x the read"
            )


CYCLES = ("aggregate the dust", "sell what cycle 1 made ready", "nothing new")
TARGET_MS = 2000
READ_OPEN_LOTS = (
    "SELECT id, account, symbol, quantity FROM lots WHERE kind = 'holding' AND status = 'open' AND quantity > 0"
    " ORDER BY id"
)


def run(admin_url: str, lots: int, accounts: int, symbols: int, *, verbose: bool) -> list[float]:
    """The three cycles in a fresh database; their wall times in seconds, then the two ceilings'."""
    name = f"dustpan_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = database_url_for(admin_url, name)
    now = datetime.now(UTC)
    try:
        migrate(url)
        started = time.perf_counter()
        with psycopg2.connect(url) as connection, connection.cursor() as cursor:
            cursor.execute(FILL, {"lots": lots, "accounts": accounts, "symbols": symbols, "now": now})
            cursor.execute("SELECT version()")
            (version,) = cursor.fetchone()
        if verbose:
            print(f"postgresql            {version.split(' on ')[0]}")
            print(f"holding lots          {lots:,} over {accounts} accounts x {symbols} symbols")
            print(f"generated in          {time.perf_counter() - started:.1f} s")
        ceilings = _ceilings(url)
        broker_calls: list[str] = []

        def broker_price(symbol: str) -> Decimal:  # every symbol has a recorded price: never called
            broker_calls.append(symbol)
            return Decimal(100)

        config = DustScanConfig(TradingPolicy(frozenset(), frozenset(f"acct-{i}" for i in range(accounts))))
        uow = UnitOfWork(url)
        statements = _time_statements(url)
        timings = []
        for cycle, what in enumerate(CYCLES, 1):
            statements.clear()
            started = time.perf_counter()
            report = scan_dust(uow, broker_price, config, now + timedelta(minutes=cycle), execute=True)
            timings.append(time.perf_counter() - started)
            if verbose:
                print(f"cycle {cycle} ({what}){'':<{30 - len(what)}}{timings[-1] * 1000:6.0f} ms")
                print_report(report)
                slowest = sorted(statements.items(), key=lambda item: -item[1][1])[:3]
                print("    slowest statements: " + "; ".join(f"{s} x{n} {t * 1000:.0f} ms" for s, (n, t) in slowest))
        if verbose:
            print(f"broker price calls    {len(broker_calls)}")
        return timings + ceilings
    finally:
        dispose_engines()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _ceilings(url: str) -> list[float]:
    """Seconds (best of 3) to read every open holding lot as the scan does, and to count the lots."""
    best = [float("inf"), float("inf")]
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        for _ in range(3):
            for n, query in enumerate((READ_OPEN_LOTS, "SELECT count(*) FROM lots")):
                started = time.perf_counter()
                cursor.execute(query)
                cursor.fetchall()
                best[n] = min(best[n], time.perf_counter() - started)
    return best


def _time_statements(url: str) -> dict[str, list[float]]:
    """Wall time per kind of SQL statement (its first words), over one cycle."""
    totals: dict[str, list[float]] = {}

    @event.listens_for(engine_for(url), "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        conn.info["started"] = time.perf_counter()

    @event.listens_for(engine_for(url), "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        kind = " ".join(statement.split()[:3])
        entry = totals.setdefault(kind, [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - conn.info["started"]

    return totals


def print_report(report: ScanReport) -> None:
    print(
        f"    lots seen {report.lots_seen:,}, dust found {report.dust_found:,}, aggregated {report.aggregated:,}, "
        f"aggregates created {report.aggregates_created:,}; pending {report.pending:,}, ready {report.ready:,}, "
        f"selling {report.selling:,}; sales created {len(report.sales):,}"
    )


if __name__ == "__main__":
    main()
