"""What the running-totals triggers cost the hot path: storing and accumulating, triggers on vs off.

    .venv/bin/python bench/totals_trigger_cost.py [--rounds 12] [--database-url URL]

On a fresh, migrated database, each round stores 2,000 trades of a new symbol as 20 webhook
INSERTs of 100 (``tasks.ingestion.store_trades``) and applies them in one accumulate run of
2,000 (``accumulate_symbol``: the claim UPDATE, one execution, the UPDATE that takes from the
trades), once with the statement triggers of migration 0007 enabled and once disabled
(``ALTER TABLE ... DISABLE TRIGGER USER``), alternately, and prints the medians side by side.
Prints figures; never asserts on time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg2

from bench._servers import create_database, drop_database, postgres_server
from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from workers.cli import migrate

TABLES = ("trades", "executions", "execution_returns", "dust_ledger")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--database-url", help="a server where the bench may create a database")
    args = parser.parse_args()
    with postgres_server(args.database_url) as admin_url:
        url = create_database(admin_url, f"dustpan_triggers_{uuid.uuid4().hex[:8]}")
        try:
            migrate(url)
            run(url, args.rounds)
        finally:
            drop_database(admin_url, url)


def run(url: str, rounds: int) -> None:
    uow, config, now = UnitOfWork(url), AccumulationConfig(Decimal(1), 2000, frozenset()), datetime.now(UTC)
    samples: dict[bool, dict[str, list[float]]] = {on: {"store 100": [], "accumulate 2000": []} for on in (True, False)}
    for n in range(rounds):
        for on in (True, False):
            _triggers(url, on)
            symbol = f"S{n}{'T' if on else 'F'}"
            for batch in range(20):
                trades = [
                    IncomingTrade(f"{symbol}-{batch}-{i}", symbol, Side.BUY, Decimal("0.37"), Decimal(100), now)
                    for i in range(100)
                ]
                samples[on]["store 100"].append(_ms(lambda t=trades: store_trades(uow, t)))
            samples[on]["accumulate 2000"].append(_ms(lambda s=symbol: accumulate_symbol(uow, s, config, now)))
    _triggers(url, True)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {rounds} rounds")
    for what in ("store 100", "accumulate 2000"):
        on, off = (statistics.median(samples[flag][what]) for flag in (True, False))
        print(f"{what:16} triggers on {on:7.2f} ms   off {off:7.2f} ms   {on - off:+7.2f} ms ({on / off:.2f}x)")


def _triggers(url: str, on: bool) -> None:
    connection = psycopg2.connect(url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for table in TABLES:
                cursor.execute(f"ALTER TABLE {table} {'ENABLE' if on else 'DISABLE'} TRIGGER USER")
    finally:
        connection.close()


def _ms(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    main()
