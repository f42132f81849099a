"""`dustpan scan` (dry run unless --execute) and `dustpan sync` (venue rules, then positions)."""

from __future__ import annotations

import argparse
import json
from typing import Any

COMMANDS = ("scan", "sync")


def add_commands(commands: Any) -> None:
    scan = commands.add_parser("scan", help="run the dust scan once; a dry run unless --execute")
    scan.add_argument("--execute", action="store_true", help="aggregate and create the sale orders")
    scan.add_argument("--json", action="store_true")
    sync = commands.add_parser("sync", help="sync venue rules and positions (into lots) once")
    sync.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    # Imported here: `dustpan up` and the other commands should not load Celery's tasks.
    from tasks import dust_tasks, positions_tasks, venues_tasks
    from workers.celery_app import app
    from workers.console import spinner

    deps = app.dependencies

    if args.command == "scan":
        with spinner("scanning lots for dust" + ("" if args.execute else " (dry run)")):
            summary = dust_tasks.scan_once(deps, args.execute)
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print_scan(summary)
        return 0
    with spinner("syncing venue rules"):
        venues = venues_tasks.sync_once(deps)
    with spinner("syncing broker positions into lots"):
        summary = {"venues": venues, "positions": positions_tasks.sync_once(deps)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_sync(summary)
    failed = summary["venues"]["failed"] or any(a["error"] for a in summary["positions"].values())
    return 1 if failed else 0


def print_scan(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    dry = summary["dry_run"]
    table = Table(title="Dust scan (dry run)" if dry else "Dust scan")
    table.add_column("")
    table.add_column("count", justify="right")
    for label, key in (
        ("lots seen", "lots_seen"),
        ("dust found", "dust_found"),
        ("lots aggregated", "aggregated"),
        ("aggregates created", "aggregates_created"),
        ("aggregates pending", "aggregates_pending"),
        ("aggregates ready", "aggregates_ready"),
        ("aggregates selling", "aggregates_selling"),
    ):
        table.add_row(label, str(summary[key]))
    table.add_row("would sell" if dry else "sale orders created", str(len(summary["sales"])))
    console = Console(width=160)
    console.print(table)
    if dry:
        console.print("dry run: nothing was changed; `dustpan scan --execute` aggregates and sells")
    if summary["sales"]:
        sales = Table(title="Would sell" if dry else "Sold through execution.submit")
        for column in ("aggregate", "account", "symbol", "quantity", "execution"):
            sales.add_column(column, justify="right" if column == "quantity" else "left")
        for sale in summary["sales"]:
            execution = sale["execution_id"] or ""
            sales.add_row(f"#{sale['aggregate_id']}", sale["account"], sale["symbol"], sale["quantity"], execution)
        console.print(sales)
    for reason, symbols in summary["skipped"].items():
        console.print(f"skipped ({reason}): {', '.join(symbols)}")
    if summary["unpriced"]:
        console.print(f"no price (notional minimum not checked): {', '.join(summary['unpriced'])}")


def print_sync(summary: dict[str, Any]) -> None:
    venues = summary["venues"]
    print(
        f"venue rules: {len(venues['synced'])} synced, {len(venues['overridden'])} with a config override, "
        f"{len(venues['unknown'])} unknown to the broker, {len(venues['failed'])} failed"
    )
    for symbol, error in venues["failed"].items():
        print(f"  {symbol}: {error}")
    for account, result in summary["positions"].items():
        if result["error"]:
            print(f"positions of {account}: failed: {result['error']}")
            continue
        print(
            f"positions of {account}: {len(result['created'])} new lots, {len(result['updated'])} updated, "
            f"{len(result['closed'])} closed at the broker"
        )
        for symbol, quantity in result["shortfalls"].items():
            print(f"  {symbol}: lots track {quantity} more than the broker holds")
