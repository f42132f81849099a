"""`dustpan report` / `audit` / `freezes` / `balances`: what the books say, as tables or as JSON.

`collect()` reads everything into one JSON-ready dict (decimals as exact strings); the tables
are drawn from that same dict, so `--json` and the tables can never disagree.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.domain.quantities import canonical, money_text
from models.tables import Accumulator, Position, SymbolFreeze
from models.tables_ops import Lot
from workers import runtime
from workers.console import table, table_console

if TYPE_CHECKING:
    from tasks.audit import AuditReport

Json = dict[str, Any]


def collect() -> Json:
    """Every section of the report; the audit runs last, in its own snapshot."""
    from tasks.audit import audit_books
    from tasks.position_book import open_positions, realized_pnl
    from tasks.totals import ledger_totals

    volume = ledger_totals(runtime.unit_of_work())
    with runtime.unit_of_work() as uow:
        session = uow.session
        data: Json = {
            "trades": _trades_by_status(session),
            "accumulators": _accumulators(session),
            "executions": _executions(session),
            "dust": {
                "ledger": {
                    "sales": volume.sales,
                    "proceeds": money_text(volume.proceeds),
                    "dust": money_text(volume.dust),
                    "volume_with_dust": money_text(volume.volume_with_dust),
                },
                "aggregates": _dust_aggregates(session),
                "lots": _dust_lots(session),
                "orphaned": _orphaned(session),
            },
            "freezes": freezes_json(session),
        }
    data["balances"] = balances_json()
    data["positions"] = open_positions(runtime.unit_of_work())
    pnl = realized_pnl(runtime.unit_of_work())
    data["pnl"] = {"totals": pnl["totals"], "total": pnl["total"]}
    settings = runtime.settings()
    threshold, max_waiting = settings.accumulation.threshold, settings.audit.max_waiting_seconds
    data["audit"] = audit_books(runtime.unit_of_work(), threshold, runtime.now(), max_waiting).as_json()
    return data


def _accumulators(session: Session) -> list[Json]:
    rows = session.scalars(select(Accumulator).order_by(Accumulator.symbol)).all()
    return [
        {"symbol": a.symbol, "net_quantity": canonical(a.net_quantity), "updated_at": a.updated_at.isoformat()}
        for a in rows
    ]


def _trades_by_status(session: Session) -> Json:
    """From the totals the triggers keep (tasks.totals): the cost does not grow with history."""
    from tasks.totals import book_rows

    counts: Json = {}
    for row in book_rows(session, "trade"):
        counts[row.status] = counts.get(row.status, 0) + row.row_count
    return dict(sorted(counts.items()))


def _executions(session: Session) -> list[Json]:
    from tasks.totals import book_rows

    return [
        {
            "symbol": r.symbol,
            "side": r.side,
            "status": r.status,
            "count": r.row_count,
            "quantity": canonical(r.quantity),
            "filled": canonical(r.filled),
        }
        for r in book_rows(session, "execution")
    ]


def _dust_aggregates(session: Session) -> list[Json]:
    """Dust aggregates (lots of kind ``aggregate``) by status and symbol."""
    rows = session.execute(
        select(Lot.status, Lot.symbol, func.count(), func.sum(Lot.quantity))
        .where(Lot.kind == "aggregate")
        .group_by(Lot.status, Lot.symbol)
        .order_by(Lot.status, Lot.symbol)
    ).all()
    return [
        {"status": status, "symbol": symbol, "aggregates": n, "quantity": canonical(quantity)}
        for status, symbol, n, quantity in rows
    ]


def _dust_lots(session: Session) -> list[Json]:
    """Holding lots by status (``dust_aggregated``: moved into an aggregate) and symbol."""
    rows = session.execute(
        select(Lot.status, Lot.symbol, func.count(), func.sum(Lot.quantity))
        .where(Lot.kind == "holding", Lot.status != "open")
        .group_by(Lot.status, Lot.symbol)
        .order_by(Lot.status, Lot.symbol)
    ).all()
    return [{"status": st, "symbol": sy, "lots": n, "quantity": canonical(q)} for st, sy, n, q in rows]


def _orphaned(session: Session) -> list[Json]:
    """Exit remainders whose closing order failed (``dust_orphaned``), left for the cleanup job."""
    rows = session.scalars(
        select(Position).where(Position.status == "dust_orphaned").order_by(Position.account, Position.symbol)
    ).all()
    return [
        {
            "account": p.account,
            "symbol": p.symbol,
            "quantity": canonical(p.quantity),
            "updated_at": p.updated_at.isoformat(),
        }
        for p in rows
    ]


def freezes_json(session: Session) -> list[Json]:
    rows = session.scalars(select(SymbolFreeze).order_by(SymbolFreeze.symbol)).all()
    return [
        {"symbol": r.symbol, "source": r.source, "reason": r.reason, "since": r.frozen_at.isoformat()} for r in rows
    ]


def balances_json() -> Json:
    from tasks.balances import known_balances

    config = runtime.balance_config()
    balances = known_balances(runtime.unit_of_work(), runtime.settings().accounts, config.max_age, runtime.now())
    return {"max_age_seconds": config.max_age_seconds, "items": [b.as_json() for b in balances]}


# --- printing --------------------------------------------------------------------------------


def print_report(as_json: bool = False) -> None:
    data = collect()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console = table_console()
    trades = data["trades"]
    console.print("Trades: " + (", ".join(f"{status} {n}" for status, n in sorted(trades.items())) or "none"))
    print_accumulators(data["accumulators"], console)
    print_executions(data["executions"], console)
    print_dust(data["dust"], console)
    print_freezes(data["freezes"], console)
    print_balances(data["balances"], console)
    print_positions(data["positions"], console)
    print_pnl(data["pnl"], console)
    print_audit_json(data["audit"], console)


def print_accumulators(rows: list[Json], console: Console) -> None:
    accumulators = table(
        "Accumulators (residual net per symbol)", ("symbol", "net quantity", "updated"), ["net quantity"]
    )
    for row in rows:
        accumulators.add_row(row["symbol"], row["net_quantity"], _seconds(row["updated_at"]))
    console.print(accumulators if rows else "Accumulators: none yet")


def print_executions(rows: list[Json], console: Console) -> None:
    numbers = ("orders", "shares", "filled")
    executions = table("Executions by symbol, side and status", ("symbol", "side", "status", *numbers), numbers)
    for row in rows:
        executions.add_row(row["symbol"], row["side"], row["status"], str(row["count"]), row["quantity"], row["filled"])
    console.print(executions if rows else "Executions: none yet")


def print_dust(dust: Json, console: Console) -> None:
    money = ("sales", "proceeds", "dust", "volume with dust")
    ledger = table("Dust ledger of notional sales (USD)", money, money)
    entry = dust["ledger"]
    ledger.add_row(str(entry["sales"]), entry["proceeds"], entry["dust"], entry["volume_with_dust"])
    console.print(ledger)
    aggregates = table(
        "Dust aggregates by status", ("status", "symbol", "aggregates", "quantity"), ("aggregates", "quantity")
    )
    for row in dust["aggregates"]:
        aggregates.add_row(row["status"], row["symbol"], str(row["aggregates"]), row["quantity"])
    console.print(aggregates if dust["aggregates"] else "Dust aggregates: none")
    lots = table("Dust lots by status", ("status", "symbol", "lots", "quantity"), ("lots", "quantity"))
    for row in dust["lots"]:
        lots.add_row(row["status"], row["symbol"], str(row["lots"]), row["quantity"])
    console.print(lots if dust["lots"] else "Dust lots: none aggregated")
    orphaned = table("Orphaned remainders (dust_orphaned)", ("account", "symbol", "quantity", "since"), ["quantity"])
    for row in dust["orphaned"]:
        orphaned.add_row(row["account"], row["symbol"], row["quantity"], _seconds(row["updated_at"]))
    console.print(orphaned if dust["orphaned"] else "Orphaned remainders: none")


def print_freezes(rows: list[Json], console: Console) -> None:
    freezes = table("Frozen symbols", ("symbol", "source", "reason", "since"))
    for row in rows:
        freezes.add_row(row["symbol"], row["source"], escape(row["reason"]), _seconds(row["since"]))
    console.print(freezes if rows else "no frozen symbols")


def print_balances(balances: Json, console: Console) -> None:
    money = ("cash", "buying power", "equity")
    title = f"Balances (unknown when older than {balances['max_age_seconds']} s)"
    shown = table(title, ("account", *money, "age", "last error"), (*money, "age"))
    for b in balances["items"]:
        age = "unknown" if b["age_seconds"] is None else f"{b['age_seconds']} s"
        shown.add_row(b["account"], b["cash"], b["buying_power"], b["equity"], age, escape(b["last_error"] or ""))
    console.print(shown)


def print_positions(rows: list[Json], console: Console) -> None:
    numbers = ("quantity", "average cost", "last price", "value", "unrealized P&L")
    shown = table("Open positions", ("account", "symbol", *numbers, "status"), numbers)
    for p in rows:
        cells = [p["quantity"], p["average_cost"], p["last_price"], p["value"], p["unrealized_pnl"]]
        shown.add_row(p["account"], p["symbol"], *(c or "unknown" for c in cells), p["status"])
    console.print(shown if rows else "Open positions: none")


def print_pnl(pnl: Json, console: Console) -> None:
    shown = table("Realized P&L by symbol and reason (USD)", ("symbol", "reason", "P&L"), ["P&L"])
    for row in pnl["totals"]:
        shown.add_row(row["symbol"], escape(row["reason"]), row["pnl"])
    shown.add_row("", "total", pnl["total"])
    console.print(shown if pnl["totals"] else "Realized P&L: none")


def print_audit(report: AuditReport, console: Console | None = None) -> None:
    print_audit_json(report.as_json(), console or table_console())


def print_audit_json(audit: Json, console: Console) -> None:
    numbers = ("trades total", "executed", "in flight", "residual")
    shown = table("Audit: trades = executed + in flight + residual", ("symbol", *numbers, "balanced"), numbers)
    for s in audit["symbols"]:
        balanced = "yes" if s["balanced"] else "[red]NO: " + escape("; ".join(s["problems"])) + "[/red]"
        shown.add_row(
            s["symbol"], s["trades_total"], s["executed_total"], s["in_flight_total"], s["residual"], balanced
        )
    console.print(shown)
    console.print("[green]audit ok[/green]" if audit["ok"] else "[red]audit found imbalances[/red]")


def _seconds(iso: str) -> str:
    """An ISO timestamp without its sub-second digits (the JSON keeps them)."""
    return datetime.fromisoformat(iso).isoformat(timespec="seconds")
