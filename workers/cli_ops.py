"""Operator commands of `dustpan`: freeze, unfreeze, freezes, balances, archive."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from models.domain.grammar import GrammarError, parse_symbol

# The database-bound modules are imported when a command runs: `dustpan up` should not pay for them.
COMMANDS = ("freeze", "unfreeze", "freezes", "balances", "archive")
MONTH = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")


def symbol_argument(text: str) -> str:
    """The API's symbol grammar (SPEC section 3); argparse turns the refusal into exit status 2."""
    try:
        return parse_symbol(text)
    except GrammarError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a symbol: it {exc}") from None


def _month(text: str) -> datetime:
    match = MONTH.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month (YYYY-MM, e.g. 2026-01)")
    return datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)


def add_commands(commands: Any) -> None:
    """Add the subcommands to the `dustpan` parser's subparsers."""
    freeze = commands.add_parser("freeze", help="stop ordering a symbol (trades keep accumulating)")
    freeze.add_argument("symbol", type=symbol_argument)
    freeze.add_argument("--reason", default="frozen by an operator")
    unfreeze = commands.add_parser("unfreeze", help="lift a symbol's freeze, manual or automatic")
    unfreeze.add_argument("symbol", type=symbol_argument)
    freezes = commands.add_parser("freezes", help="the frozen symbols, with source and reason")
    freezes.add_argument("--json", action="store_true")
    balances = commands.add_parser("balances", help="the last known balance of each account, with its age")
    balances.add_argument("--json", action="store_true")
    archive = commands.add_parser(
        "archive", help="move verified, settled trades received before a month to the archive (dry run by default)"
    )
    archive.add_argument("--before", type=_month, required=True, metavar="YYYY-MM", help="first month kept")
    archive.add_argument("--execute", action="store_true", help="move them; without it, only say what would move")
    archive.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from tasks.freezes import freeze_symbol, unfreeze_symbol
    from workers import runtime

    if args.command == "archive":
        return _archive(args)
    if args.command == "freeze":
        created = freeze_symbol(runtime.unit_of_work(), args.symbol, args.reason, runtime.now())
        print(f"{args.symbol} frozen" if created else f"{args.symbol} was already frozen (kept as it was)")
        return 0
    if args.command == "unfreeze":
        if unfreeze_symbol(runtime.unit_of_work(), args.symbol, runtime.now()):
            print(f"{args.symbol} unfrozen")
            return 0
        print(f"{args.symbol} is not frozen")
        return 1
    from workers import report

    if args.command == "freezes":
        with runtime.unit_of_work() as uow:
            freezes = report.freezes_json(uow.session)
        _show(freezes, report.print_freezes, args.json)
        return 0
    _show(report.balances_json(), report.print_balances, args.json)
    return 0


def _archive(args: argparse.Namespace) -> int:
    from tasks.retention import archive_before
    from workers import runtime

    report = archive_before(runtime.unit_of_work(), args.before, runtime.now(), execute=args.execute)
    data = report.as_json()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    verb = "moved" if report.executed else "would move (dry run; --execute to move)"
    for s in data["symbols"]:
        print(f"{s['symbol']}: {s['trades']} trades, applied {s['applied']}")
    print(f"{data['trades']} trades received before {args.before:%Y-%m} {verb}")
    return 0


def _show(data: Any, print_table: Callable[[Any, Any], None], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        from workers.console import table_console

        print_table(data, table_console())
