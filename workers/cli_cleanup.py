"""`dustpan cleanup` and `dustpan normalize`: broker-level dust, once; a dry run unless --execute."""

from __future__ import annotations

import argparse
import json
from typing import Any

COMMANDS = ("cleanup", "normalize")


def add_commands(commands: Any) -> None:
    for name, what in (
        ("cleanup", "force-liquidate positions worth less than dust.broker_cleanup_usd"),
        ("normalize", "close positions below dust.normalize_usd, consolidate those up to dust.consolidate_usd"),
    ):
        command = commands.add_parser(name, help=f"{what}, once; a dry run unless --execute")
        command.add_argument("--execute", action="store_true", help="close the positions instead of listing them")
        command.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from tasks.dust_tasks import cleanup_job
    from workers import runtime
    from workers.celery_app import app
    from workers.console import spinner

    config = runtime.settings()
    threshold = config.dust.broker_cleanup_usd if args.command == "cleanup" else config.dust.normalize_usd
    with spinner(f"{args.command}: positions below {threshold} USD" + ("" if args.execute else " (dry run)")):
        job = "broker_cleanup" if args.command == "cleanup" else "normalize"
        summary = cleanup_job(app.dependencies, job, args.execute)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    failed_orphans = any(o["action"] == "failed" for o in summary["orphans"])
    return 1 if summary["failed"] or failed_orphans else 0


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{summary['job']}: positions below {summary['threshold_usd']} USD"
    table = Table(title=title + (" (dry run)" if summary["dry_run"] else ""))
    for column in ("account", "symbol", "quantity", "value", "action", "reason"):
        table.add_column(column, justify="right" if column in ("quantity", "value") else "left")
    for line in summary["lines"]:
        table.add_row(line["account"], line["symbol"], line["quantity"], line["value"], line["action"], line["reason"])
    console = Console(width=160)
    console.print(table)
    for orphan in summary["orphans"]:
        console.print(
            f"orphaned remainder {orphan['account']} {orphan['symbol']} {orphan['quantity']}: "
            f"{orphan['action']} ({orphan['reason']})"
        )
    console.print(
        f"positions seen {summary['positions_seen']}, dust found {summary['dust_found']}, "
        f"closed {summary['closed']}, would close {summary['would_close']}, skipped {summary['skipped']}, "
        f"failed {summary['failed']}, consolidated {summary['consolidated']}, "
        f"would consolidate {summary['would_consolidate']}, dust value {summary['dust_value_usd']} USD"
    )
    if summary["dry_run"]:
        console.print("dry run: nothing was sent; add --execute to close them")
