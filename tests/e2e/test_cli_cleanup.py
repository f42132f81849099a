"""`dustpan cleanup` / `normalize` against the paper brokerage: dry run first, --execute closes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg2

DUSTPAN = [sys.executable, "-m", "workers.cli"]


def dustpan(*args: str, database_url: str, broker_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(DUSTPAN_DATABASE_URL=database_url, DUSTPAN_BROKER_URL=broker_url)
    return subprocess.run([*DUSTPAN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def paper_holds(database_url: str) -> None:
    """The paper broker holds 0.004 AAPL (worth 0.80 at 200) and 0.015 MSFT (6.00 at 400)."""
    with psycopg2.connect(database_url) as connection, connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO accumulators (symbol, last_price) VALUES ('AAPL', 200), ('MSFT', 400);"
            "INSERT INTO paper_orders (id, client_order_id, symbol, side, qty, status, filled_qty, filled_avg_price)"
            " VALUES (gen_random_uuid(), 'seed-1', 'AAPL', 'buy', 0.004, 'filled', 0.004, 200),"
            "        (gen_random_uuid(), 'seed-2', 'MSFT', 'buy', 0.015, 'filled', 0.015, 400)"
        )


def test_cleanup_is_a_dry_run_until_execute_and_then_finds_nothing(
    clean_database: str, broker_url: str, tmp_path: Path
) -> None:
    paper_holds(clean_database)
    urls = {"database_url": clean_database, "broker_url": broker_url, "cwd": tmp_path}
    dry = dustpan("cleanup", **urls)
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and "AAPL" in dry.stdout and "MSFT" not in dry.stdout
    executed = json.loads(dustpan("cleanup", "--execute", "--json", **urls).stdout)
    assert (executed["closed"], executed["dust_value_usd"]) == (1, "0.80")
    again = json.loads(dustpan("cleanup", "--execute", "--json", **urls).stdout)
    assert again["dust_found"] == 0  # the position is gone at the broker
    normalized = json.loads(dustpan("normalize", "--json", **urls).stdout)
    assert [(line["symbol"], line["action"]) for line in normalized["lines"]] == [("MSFT", "would_close")]
