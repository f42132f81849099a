"""`dustpan report` and the status line of `dustpan up` as a user sees them (SPEC section 2).

The report runs as a real subprocess against books written with SQL; the status line is read
once in-process from real PostgreSQL and Redis, and once from a running `dustpan up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psutil
import psycopg2
import pytest
import redis
from sqlalchemy import text

from models.db import UnitOfWork
from tests.support.fleet import free_port, wait_for
from workers.up_status import LATENCY_P99_SQL, LATENCY_WINDOW_SECONDS, QUEUES, StatusReader, ThrottledAudit, read_status

DUSTPAN = [sys.executable, "-m", "workers.cli"]
NET = "0.123456789012345678"  # 18 decimals: the report must show every one of them
VOLUME_WITH_DUST = "50.050000000000000001"
STOP_TIMEOUT = 35


def dustpan(*args: str, database_url: str, broker_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(DUSTPAN_DATABASE_URL=database_url, DUSTPAN_BROKER_URL=broker_url)
    return subprocess.run([*DUSTPAN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def execute(database_url: str, *statements: str) -> None:
    connection = psycopg2.connect(database_url)
    with connection, connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)
    connection.close()


def write_books(database_url: str) -> None:
    """Balanced books with one of everything the report shows."""
    execute(
        database_url,
        # AAPL: 1.123... bought upstream, 1 share ordered and filled, 0.123... left in the net.
        "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash, status, open_quantity)"
        f" VALUES ('t1', 'AAPL', 'buy', 1.{NET[2:]}, 231.40, now(), 'h', 'accumulated', {NET})",
        f"INSERT INTO accumulators (symbol, net_quantity) VALUES ('AAPL', {NET})",
        "INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, filled_quantity, average_price)"
        " VALUES ('00000000-0000-0000-0000-000000000001', 'AAPL', 'buy', 1, 'filled', 'dp-1', 1, 231.40)",
        "INSERT INTO contributions (execution_id, trade_id, quantity)"
        " VALUES ('00000000-0000-0000-0000-000000000001', 't1', 1)",
        # A notional sale of 50.050000000000000001 USD whose dust is 1e-18 USD.
        "INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, source)"
        " VALUES ('00000000-0000-0000-0000-000000000002', 'MSFT', 'sell', 0.5, 'pending', 'dp-2', 'sell')",
        "INSERT INTO dust_ledger (execution_id, account, symbol, requested_notional, price, quantity, proceeds, dust)"
        f" VALUES ('00000000-0000-0000-0000-000000000002', 'default', 'MSFT', {VOLUME_WITH_DUST}, 100.10, 0.5,"
        " 50.05, 0.000000000000000001)",
        "INSERT INTO lots (account, symbol, kind, quantity, status)"
        " VALUES ('default', 'BTC-USD', 'aggregate', 0.00011, 'dust_ready')",
        "INSERT INTO positions (account, symbol, quantity, status)"
        " VALUES ('default', 'TSLA', 0.000007, 'dust_orphaned')",
        "INSERT INTO symbol_freezes (symbol, reason, source) VALUES ('NVDA', 'earnings call [manual]', 'manual')",
        "INSERT INTO balances (account, cash, buying_power, equity, fetched_at)"
        " VALUES ('default', 100000.000000000000000001, 200000, 100050.05, now()),"
        " ('stale', 5, 5, 5, now() - interval '1 day')",
    )


def test_report_prints_every_section_with_exact_decimals(clean_database: str, broker_url: str, tmp_path: Path) -> None:
    write_books(clean_database)
    done = dustpan("report", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for section in (
        "Accumulators",
        "Executions by symbol, side and status",
        "Dust ledger",
        "Dust aggregates by status",
        "Orphaned remainders",
        "Frozen symbols",
        "Balances",
        "Audit",
    ):
        assert section in out, f"{section!r} missing:\n{out}"
    assert "…" not in out, out
    for exact in (NET, "1.123456789012345678", VOLUME_WITH_DUST, "0.000000000000000001", "100000.000000000000000001"):
        assert exact in out, f"{exact} not shown in full:\n{out}"
    assert "0.00011" in out and "dust_ready" in out and "0.000007" in out
    assert "earnings call [manual]" in out  # free text is shown as written, not read as markup
    [stale] = [line for line in out.splitlines() if "stale" in line]
    assert stale.count("unknown") == 3, stale  # cash, buying power, equity: unknown, never 0
    assert "audit ok" in out


def test_report_json_has_every_section_with_decimals_as_strings(
    clean_database: str, broker_url: str, tmp_path: Path
) -> None:
    write_books(clean_database)
    done = dustpan("report", "--json", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"accumulators", "executions", "dust", "freezes", "balances", "audit"} <= report.keys()
    assert report["accumulators"][0]["net_quantity"] == NET
    assert {(e["symbol"], e["status"], e["quantity"]) for e in report["executions"]} == {
        ("AAPL", "filled", "1"),
        ("MSFT", "pending", "0.5"),
    }
    assert report["dust"]["ledger"] == {
        "sales": 1,
        "proceeds": "50.05",
        "dust": "0.000000000000000001",
        "volume_with_dust": VOLUME_WITH_DUST,
    }
    assert report["dust"]["aggregates"] == [
        {"status": "dust_ready", "symbol": "BTC-USD", "aggregates": 1, "quantity": "0.00011"}
    ]
    assert [(o["symbol"], o["quantity"]) for o in report["dust"]["orphaned"]] == [("TSLA", "0.000007")]
    assert [(f["symbol"], f["source"]) for f in report["freezes"]] == [("NVDA", "manual")]
    balances = {b["account"]: b for b in report["balances"]["items"]}
    assert balances["default"]["cash"] == "100000.000000000000000001"
    assert (balances["stale"]["known"], balances["stale"]["cash"]) == (False, "unknown")
    assert report["audit"]["ok"] is True


def test_freezes_and_balances_answer_json(clean_database: str, broker_url: str, tmp_path: Path) -> None:
    write_books(clean_database)
    freezes = dustpan("freezes", "--json", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert freezes.returncode == 0, freezes.stderr
    [nvda] = json.loads(freezes.stdout)
    assert (nvda["symbol"], nvda["reason"]) == ("NVDA", "earnings call [manual]")
    balances = dustpan("balances", "--json", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert balances.returncode == 0, balances.stderr
    items = {b["account"]: b for b in json.loads(balances.stdout)["items"]}
    assert items["default"]["equity"] == "100050.05"
    assert items["stale"]["equity"] == "unknown"


# --- the status line of `dustpan up` ----------------------------------------------------------


def test_status_counts_queues_recent_trades_executions_and_imbalances(clean_database: str, broker_url: str) -> None:
    execute(
        clean_database,
        "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash, received_at)"
        " SELECT 'new-' || n, 'AAPL', 'buy', 0.5, 10, now(), 'h', now() FROM generate_series(1, 3) n",
        "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash, received_at)"
        " VALUES ('old', 'AAPL', 'buy', 0.5, 10, now(), 'h', now() - interval '1 hour')",
        # Notional sales: counted by status, and not part of the audit's hedge books.
        "INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, source, filled_quantity)"
        " SELECT gen_random_uuid(), 'MSFT', 'sell', 1, status, status || n, 'sell', filled"
        " FROM (VALUES ('pending', 0, 1), ('submitted', 0, 1), ('filled', 1, 1), ('filled', 1, 2))"
        " AS s (status, filled, n)",
        # An accumulated trade that no net or execution accounts for: one unbalanced symbol.
        "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash, status, open_quantity,"
        " received_at) VALUES ('x', 'ZZZ', 'buy', 1.5, 10, now(), 'h', 'accumulated', 1.5, now() - interval '1 day')",
        "INSERT INTO accumulators (symbol, net_quantity) VALUES ('ZZZ', 0)",
    )
    client = redis.Redis.from_url(broker_url)
    client.rpush("ingestion", "m1", "m2")
    client.rpush("execution\x06\x166", "m3")  # a prioritised message counts for its queue too
    uow = UnitOfWork(clean_database)

    status = read_status(uow, client, ThrottledAudit(uow, Decimal(1)), window_seconds=10, restarts=2)

    assert status.queues == {"ingestion": 2, "execution": 1, "ops": 0}
    assert status.trades_per_second == Decimal("0.3")  # 3 trades in the last 10 s; the old ones are not
    assert status.executions == {"pending": 1, "submitted": 1, "filled": 2}
    assert (status.imbalances, status.restarts) == (1, 2)
    line = status.line()
    assert line.startswith("queue ingestion 2 execution 1 ops 0 | trades/s 0.3 |"), line
    assert "executions pending 1 submitted 1 filled 2 | imbalances 1 | restarts 2" in line
    client.close()


# Trades waiting 1..100 ms in the last minute, and one long ago that waited 10 s.
LATENCY_BOOKS = (
    "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash, status, received_at,"
    " accumulated_at) SELECT 'w-' || n, 'AAPL', 'buy', 1, 10, now(), 'h', 'accumulated', now() - interval '2 s',"
    " now() - interval '2 s' + n * interval '1 ms' FROM generate_series(1, 100) n",
    "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash, status, received_at,"
    " accumulated_at) VALUES ('w-old', 'AAPL', 'buy', 1, 10, now(), 'h', 'accumulated', now() - interval '2 h',"
    " now() - interval '2 h' + interval '10 s')",
    # A hedge order of w-1 and w-2 (the oldest received 2 s before it went out), and a sale without trades.
    "INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, submitted_at)"
    " VALUES ('00000000-0000-0000-0000-00000000000a', 'AAPL', 'buy', 2, 'submitted', 'dp-a', now())",
    "INSERT INTO contributions (execution_id, trade_id, quantity) VALUES"
    " ('00000000-0000-0000-0000-00000000000a', 'w-1', 1), ('00000000-0000-0000-0000-00000000000a', 'w-2', 1)",
    "INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, source, submitted_at)"
    " VALUES ('00000000-0000-0000-0000-00000000000b', 'MSFT', 'sell', 1, 'submitted', 'dp-b', 'sell', now())",
)


def test_status_shows_the_p99_of_the_last_minutes_waits(clean_database: str, broker_url: str) -> None:
    uow = UnitOfWork(clean_database)
    client = redis.Redis.from_url(broker_url)
    quiet = read_status(uow, client, lambda: 0, window_seconds=10, restarts=0)
    assert (quiet.accumulated_p99, quiet.ordered_p99) == (None, None)

    execute(clean_database, *LATENCY_BOOKS)
    status = read_status(uow, client, lambda: 0, window_seconds=10, restarts=0)
    client.close()

    assert status.accumulated_p99 == timedelta(milliseconds=99)  # the 99th of 100; the old 10 s is out
    assert status.ordered_p99 == timedelta(seconds=2)  # an execution's oldest direct trade; sales have none
    assert "| p99 1m accumulated 99 ms, ordered 2000 ms |" in status.line()


def test_the_last_minutes_p99_reads_an_index_not_the_history(clean_database: str) -> None:
    execute(
        clean_database,
        "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash, status, received_at,"
        " accumulated_at) SELECT 'h-' || n, 'AAPL', 'buy', 1, 10, now(), 'h', 'accumulated',"
        " now() - interval '30 days', now() - interval '30 days' FROM generate_series(1, 50000) n",
        "INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, submitted_at)"
        " SELECT gen_random_uuid(), 'AAPL', 'buy', 1, 'cancelled', 'dp-h' || n, now() - interval '30 days'"
        " FROM generate_series(1, 20000) n",
        *LATENCY_BOOKS,
        "ANALYZE trades",
        "ANALYZE executions",
    )
    with UnitOfWork(clean_database) as uow:
        explain = text(f"EXPLAIN {LATENCY_P99_SQL.text}")
        plan = "\n".join(uow.session.scalars(explain, {"window": LATENCY_WINDOW_SECONDS}))
    assert "ix_trades_accumulated_at" in plan and "ix_executions_submitted_at" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_status_audits_at_most_every_ten_seconds(clean_database: str) -> None:
    now = [0]  # seconds of a fake monotonic clock
    audit = ThrottledAudit(UnitOfWork(clean_database), Decimal(1), clock=lambda: now[0])
    assert audit() == 0
    execute(
        clean_database,
        "INSERT INTO trades (id, symbol, side, quantity, price, executed_at, content_hash, status, open_quantity)"
        " VALUES ('x', 'ZZZ', 'buy', 1.5, 10, now(), 'h', 'accumulated', 1.5)",
    )
    now[0] = 9
    assert audit() == 0  # the audit of 9 s ago still stands
    now[0] = 10
    assert audit() == 1


def test_status_line_says_unavailable_instead_of_raising(clean_database: str) -> None:
    reader = StatusReader(clean_database, f"redis://127.0.0.1:{free_port()}/0", Decimal(1))
    line = reader.line(window_seconds=2, restarts=0)
    reader.close()
    assert "status unavailable" in line and "ConnectionError" in line, line


def test_up_prints_a_status_line_and_stops_on_ctrl_c(clean_database: str, broker_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUSTPAN_")}
    env.update(DUSTPAN_DATABASE_URL=clean_database, DUSTPAN_BROKER_URL=broker_url)
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [*DUSTPAN, "up", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so that SIGINT below is what Ctrl-C in its terminal sends
        )
    children: list[psutil.Process] = []

    def output() -> str:
        return log_path.read_text(errors="replace")

    def status_lines() -> list[str]:
        return [line for line in output().splitlines() if "queue" in line and "trades/s" in line]

    try:
        wait_for(lambda: up.poll() is not None or "dustpan is up" in output(), 120, "dustpan up to be up")
        assert up.poll() is None, output()
        children = psutil.Process(up.pid).children(recursive=True)
        wait_for(lambda: up.poll() is not None or bool(status_lines()), 20, "a status line")
        line = status_lines()[0]
        assert all(f"{queue} 0" in line for queue in QUEUES), line
        assert "executions pending 0 submitted 0 filled 0" in line and "restarts 0" in line, line

        os.killpg(up.pid, signal.SIGINT)
        try:
            code = up.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dustpan up still running {STOP_TIMEOUT} s after SIGINT\n{output()}")
        assert code == 0, output()
        assert "Traceback" not in output(), output()
    finally:
        for process in [up_process for up_process in children if up_process.is_running()]:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if up.poll() is None:
            up.kill()
            up.wait()
