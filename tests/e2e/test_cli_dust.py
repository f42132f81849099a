"""`dustpan scan` and `dustpan sync` as a user runs them (SPEC section 2): dry run unless --execute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg2

DUSTPAN = [sys.executable, "-m", "workers.cli"]
EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "dustpan.example.yaml"


def dustpan(*args: str, database_url: str, broker_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(DUSTPAN_DATABASE_URL=database_url, DUSTPAN_BROKER_URL=broker_url, DUSTPAN_CONFIG=str(EXAMPLE_CONFIG))
    return subprocess.run([*DUSTPAN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def query(database_url: str, sql: str) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(database_url)
    with connection, connection.cursor() as cursor:
        cursor.execute(sql)
        rows = cursor.fetchall() if cursor.description else []
    connection.close()
    return rows


def test_scan_is_a_dry_run_unless_executed_and_every_run_is_recorded(
    clean_database: str, broker_url: str, tmp_path: Path
) -> None:
    query(
        clean_database,
        "INSERT INTO lots (account, symbol, kind, source, quantity, status) VALUES "
        "('default', 'BTC-USD', 'holding', 'manual', 0.00006, 'open'), "
        "('default', 'BTC-USD', 'holding', 'manual', 0.00005, 'open'), "
        "('default', 'AUT-USD', 'holding', 'manual', 0.3, 'open')",
    )
    synced = dustpan("sync", "--json", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    assert "BTC-USD" in json.loads(synced.stdout)["venues"]["overridden"]  # the example config's override

    dry = dustpan("scan", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout and "dust found" in dry.stdout
    assert query(clean_database, "SELECT count(*) FROM lots WHERE kind = 'aggregate'") == [(0,)]

    for _ in range(2):  # aggregate (ready at 0.00011 >= 0.0001), then sell the next cycle
        done = dustpan("scan", "--execute", "--json", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert [(s["symbol"], s["quantity"]) for s in summary["sales"]] == [("BTC-USD", "0.00011")]
    assert summary["skipped"] == {"restricted": ["AUT-USD"]}
    sales = query(clean_database, "SELECT source, quantity = 0.00011 FROM executions")
    assert sales == [("dust_sale", True)]
    runs = query(clean_database, "SELECT job, outcome FROM job_runs ORDER BY id")
    assert runs == [("venues.sync", "ok"), ("positions.sync", "ok")] + [("dust.scan", "ok")] * 3
