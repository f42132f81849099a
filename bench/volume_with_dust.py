"""Volume including dust over a large dust ledger: one aggregate pass (SPEC 1.8).

    .venv/bin/python bench/volume_with_dust.py [--rows 1000000] [--database-url URL]

Fills a fresh database with N accepted sales (executions + dust ledger rows, generated
inside PostgreSQL), then times ``tasks.sales.ledger_volume`` (the code the API's
``GET /dust`` runs) cold and warm, and checks its answer against the generated totals.
Prints them next to the target (<= 1 s over 1,000,000 rows) and to two ceilings timed in
the same database: the same aggregate sent with psycopg2 (no ORM, no pool) and a plain
``SELECT count(*)``. Prints figures; never asserts on time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg2

from bench._servers import database_url_for, postgres_server
from models.db import UnitOfWork, dispose_engines
from tasks.sales import ledger_volume
from workers.cli import migrate

FILL = """
INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, filled_quantity, source)
SELECT md5(n::text)::uuid, 'SYM' || (n %% 50), 'sell', 1 + n %% 7, 'filled', 'dp-bench-' || n, 1 + n %% 7, 'sell'
FROM generate_series(1, %(rows)s) AS n;
INSERT INTO dust_ledger (execution_id, account, symbol, requested_notional, price, quantity, proceeds, dust)
SELECT md5(n::text)::uuid, 'default', 'SYM' || (n %% 50),
       (1 + n %% 7) * (10 + (n %% 997) / 100.0) + (n %% 89) / 100.0,
       10 + (n %% 997) / 100.0, 1 + n %% 7, (1 + n %% 7) * (10 + (n %% 997) / 100.0), (n %% 89) / 100.0
FROM generate_series(1, %(rows)s) AS n;
ANALYZE dust_ledger;
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--database-url", help="a server where the bench may create a database")
    args = parser.parse_args()
    with postgres_server(args.database_url) as admin_url:
        run(admin_url, args.rows, args.runs)


TARGET_MS = 1000
CEILINGS = {
    "the same aggregate with psycopg2": "SELECT count(*), coalesce(sum(proceeds), 0), coalesce(sum(dust), 0)"
    " FROM dust_ledger",
    "SELECT count(*) FROM dust_ledger": "SELECT count(*) FROM dust_ledger",
}


def _median_seconds(url: str, query: str, runs: int) -> float:
    timings = []
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        for _ in range(runs):
            started = time.perf_counter()
            cursor.execute(query)
            cursor.fetchall()
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def run(admin_url: str, rows: int, runs: int) -> None:
    name = f"dustpan_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = database_url_for(admin_url, name)
    try:
        migrate(url)
        started = time.perf_counter()
        with psycopg2.connect(url) as connection, connection.cursor() as cursor:
            cursor.execute(FILL, {"rows": rows})
            cursor.execute("SELECT sum(requested_notional), sum(proceeds), sum(dust), version() FROM dust_ledger")
            requested, proceeds, dust, version = cursor.fetchone()
        print(f"postgresql            {version.split(' on ')[0]}")
        print(f"ledger rows           {rows:,} (generated in {time.perf_counter() - started:.1f} s)")
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            volume = ledger_volume(UnitOfWork(url))
            timings.append(time.perf_counter() - started)
        assert volume.sales == rows and volume.proceeds == proceeds and volume.dust == dust
        assert volume.volume_with_dust == requested == Decimal(proceeds) + Decimal(dust)
        print(f"volume with dust      {volume.volume_with_dust} (= sum of requested notionals)")
        ceilings = {label: _median_seconds(url, query, runs) for label, query in CEILINGS.items()}
        warm = statistics.median(timings[1:])
        print(f"first run (cold)      {timings[0] * 1000:.0f} ms")
        print(
            f"{f'median of {runs - 1} warm':22}{warm * 1000:.0f} ms"
            f"   target <= {TARGET_MS:,} ms: {warm * 1000 / TARGET_MS:.2f}x"
        )
        print(f"best                  {min(timings) * 1000:.0f} ms")
        for label, seconds in ceilings.items():
            print(f"ceiling: {label:34} median {seconds * 1000:4.0f} ms; warm volume / ceiling {warm / seconds:.2f}x")
    finally:
        dispose_engines()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


if __name__ == "__main__":
    main()
