"""Operator commands of `dustpan`: freeze, unfreeze, freezes, balances."""

from __future__ import annotations

import argparse
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.balances import KnownBalance

# The database-bound modules are imported when a command runs: `dustpan up` should not pay for them.
COMMANDS = ("freeze", "unfreeze", "freezes", "balances")
SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9.\-/]{0,31}$")  # as the API and the webhook accept


def _symbol(text: str) -> str:
    if not SYMBOL.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a symbol (upper case, e.g. AAPL or AUT-USD)")
    return text


def add_commands(commands: Any) -> None:
    """Add the subcommands to the `dustpan` parser's subparsers."""
    freeze = commands.add_parser("freeze", help="stop ordering a symbol (trades keep accumulating)")
    freeze.add_argument("symbol", type=_symbol)
    freeze.add_argument("--reason", default="frozen by an operator")
    unfreeze = commands.add_parser("unfreeze", help="lift a symbol's freeze, manual or automatic")
    unfreeze.add_argument("symbol", type=_symbol)
    commands.add_parser("freezes", help="the frozen symbols, with source and reason")
    commands.add_parser("balances", help="the last known balance of each account, with its age")


def run(args: argparse.Namespace) -> int:
    from tasks.freezes import freeze_symbol, unfreeze_symbol
    from workers import runtime

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
    if args.command == "freezes":
        _print_freezes()
        return 0
    _print_balances()
    return 0


def _print_freezes() -> None:
    from rich.table import Table
    from sqlalchemy import select

    from models.tables import SymbolFreeze
    from workers import runtime

    with runtime.unit_of_work() as uow:
        rows = uow.session.scalars(select(SymbolFreeze).order_by(SymbolFreeze.symbol)).all()
    table = Table(title="Frozen symbols")
    for column in ("symbol", "source", "frozen at", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.symbol, row.source, row.frozen_at.isoformat(timespec="seconds"), row.reason)
    _console().print(table if rows else "no frozen symbols")


def _print_balances() -> None:
    from rich.table import Table

    from tasks.balances import known_balances
    from workers import runtime

    config = runtime.balance_config()
    balances = known_balances(runtime.unit_of_work(), runtime.settings().accounts, config.max_age, runtime.now())
    table = Table(title=f"Balances (unknown when older than {config.max_age_seconds} s)")
    for column in ("account", "cash", "buying power", "equity", "age", "last error"):
        table.add_column(column, justify="right" if column in ("cash", "buying power", "equity", "age") else "left")
    for b in balances:
        table.add_row(b.account, _money(b, b.cash), _money(b, b.buying_power), _money(b, b.equity), *_age(b))
    _console().print(table)


def _money(balance: KnownBalance, amount: Decimal | None) -> str:
    from models.domain.quantities import money_text

    return money_text(amount) if balance.known and amount is not None else "unknown"


def _age(balance: KnownBalance) -> tuple[str, str]:
    age = "unknown" if balance.age_seconds is None else f"{balance.age_seconds} s"
    return age, balance.last_error or ""


def _console() -> Any:
    from rich.console import Console

    return Console(width=160)
