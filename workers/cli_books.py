"""`dustpan positions` and `dustpan pnl [--since T] [--symbol S]`: the position book and realized P&L."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

COMMANDS = ("positions", "pnl")


def _since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time, e.g. 2026-12-01T00:00:00Z") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs an offset, e.g. Z or +00:00")
    try:
        return moment.astimezone(UTC)  # PostgreSQL takes no offset beyond 15:59
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is outside the years 1..9999 in UTC") from None


def add_commands(commands: object) -> None:
    positions = commands.add_parser("positions", help="open positions with average cost and value")  # type: ignore[attr-defined]
    positions.add_argument("--json", action="store_true")
    pnl = commands.add_parser("pnl", help="realized P&L by symbol and reason")  # type: ignore[attr-defined]
    pnl.add_argument("--since", type=_since, help="only P&L realized from this RFC 3339 time on")
    pnl.add_argument("--symbol", help="only this symbol")
    pnl.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    # Imported here: `dustpan up` should not pay for the database-bound modules.
    from tasks.position_book import PnlFilter, open_positions, realized_pnl
    from workers import report, runtime
    from workers.console import table_console

    if args.command == "positions":
        rows = open_positions(runtime.unit_of_work())
        if args.json:
            print(json.dumps({"items": rows}, indent=2))
        else:
            report.print_positions(rows, table_console())
        return 0
    pnl = realized_pnl(runtime.unit_of_work(), PnlFilter(since=args.since, symbol=args.symbol))
    if args.json:
        print(json.dumps(pnl, indent=2))
    else:
        report.print_pnl(pnl, table_console())
    return 0
