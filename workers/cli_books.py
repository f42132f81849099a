"""`dustpan positions` and `dustpan pnl [--since T] [--symbol S]`: the position book and realized P&L."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from models.domain.grammar import GrammarError, parse_time
from workers.cli_ops import symbol_argument

COMMANDS = ("positions", "pnl")


def _since(text: str) -> datetime:
    """The API's time grammar (SPEC 3): RFC 3339 with an offset, normalized to UTC, 1970..9999."""
    try:
        return parse_time(text)
    except GrammarError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: it {exc}") from None


def add_commands(commands: object) -> None:
    positions = commands.add_parser("positions", help="open positions with average cost and value")  # type: ignore[attr-defined]
    positions.add_argument("--json", action="store_true")
    pnl = commands.add_parser("pnl", help="realized P&L by symbol and reason")  # type: ignore[attr-defined]
    pnl.add_argument("--since", type=_since, help="only P&L realized from this RFC 3339 time on")
    pnl.add_argument("--symbol", type=symbol_argument, help="only this symbol")
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
