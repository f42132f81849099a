"""`dustpan positions`, `dustpan pnl` and their sections of `dustpan report`, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.test_cli_report import dustpan, execute

EXIT_ID = "00000000-0000-0000-0000-00000000000e"
CLEANUP_ID = "00000000-0000-0000-0000-00000000000c"


def write_books(database_url: str) -> None:
    """The partial exit of the source case: 98 of 100 at 24.00 against 26.52, 2 closed as dust; and
    an open position of AAPL valued at its last trade's price."""
    execute(
        database_url,
        "INSERT INTO executions (id, symbol, side, quantity, status, client_order_id, source, filled_quantity,"
        " average_price, reason) VALUES"
        f" ('{EXIT_ID}', 'EXITCO', 'sell', 98, 'filled', 'dp-e', 'exit', 98, 24, 'take profit'),"
        f" ('{CLEANUP_ID}', 'EXITCO', 'sell', 2, 'filled', 'dp-c', 'dust_cleanup', 2, 24, NULL)",
        "INSERT INTO realized_pnl (account, symbol, execution_id, quantity, entry_price, exit_price, pnl, reason,"
        " created_at) VALUES"
        f" ('default', 'EXITCO', '{EXIT_ID}', 98, 26.52, 24, -246.96, 'take profit', '2026-11-02T15:00:00Z'),"
        f" ('default', 'EXITCO', '{CLEANUP_ID}', 2, 26.52, 24, -5.04, 'dust_cleanup', '2026-11-02T15:00:01Z')",
        "INSERT INTO positions (account, symbol, quantity, average_price) VALUES"
        " ('default', 'EXITCO', 0, NULL), ('default', 'AAPL', 3, 200.000000000000000001)",
        "INSERT INTO accumulators (symbol, net_quantity, last_price) VALUES ('AAPL', 0, 210)",
    )


def test_positions_lists_open_positions_with_value_and_unrealized_pnl(
    clean_database: str, broker_url: str, tmp_path: Path
) -> None:
    write_books(clean_database)
    done = dustpan("positions", "--json", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [aapl] = json.loads(done.stdout)["items"]  # EXITCO holds nothing: not listed
    assert (aapl["symbol"], aapl["quantity"], aapl["average_cost"]) == ("AAPL", "3", "200.000000000000000001")
    assert (aapl["last_price"], aapl["value"], aapl["unrealized_pnl"]) == ("210", "630.00", "29.999999999999999997")
    table = dustpan("positions", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert table.returncode == 0 and "200.000000000000000001" in table.stdout


def test_pnl_totals_by_symbol_and_reason_with_filters(clean_database: str, broker_url: str, tmp_path: Path) -> None:
    write_books(clean_database)
    done = dustpan(
        "pnl", "--json", "--symbol", "EXITCO", database_url=clean_database, broker_url=broker_url, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    pnl = json.loads(done.stdout)
    assert pnl["totals"] == [
        {"symbol": "EXITCO", "reason": "dust_cleanup", "pnl": "-5.04"},
        {"symbol": "EXITCO", "reason": "take profit", "pnl": "-246.96"},
    ]
    assert pnl["total"] == "-252.00"
    later = dustpan(
        "pnl",
        "--json",
        "--since",
        "2026-11-02T15:00:01Z",
        database_url=clean_database,
        broker_url=broker_url,
        cwd=tmp_path,
    )
    assert json.loads(later.stdout)["total"] == "-5.04"
    table = dustpan("pnl", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert "-252.00" in table.stdout and "take profit" in table.stdout
    bad = dustpan("pnl", "--since", "yesterday", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert bad.returncode == 2 and "RFC 3339" in bad.stderr


def test_report_includes_positions_and_pnl(clean_database: str, broker_url: str, tmp_path: Path) -> None:
    write_books(clean_database)
    done = dustpan("report", "--json", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [p["symbol"] for p in report["positions"]] == ["AAPL"]
    assert report["pnl"]["total"] == "-252.00"
    table = dustpan("report", database_url=clean_database, broker_url=broker_url, cwd=tmp_path)
    assert "Open positions" in table.stdout and "Realized P&L" in table.stdout
