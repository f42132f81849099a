"""`dustpan report` / `dustpan audit`: readable tables (or JSON) of what the books say."""

from __future__ import annotations

import json
from decimal import Decimal

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from models.domain.quantities import canonical
from models.tables import Accumulator, Execution, SymbolFreeze, Trade
from tasks.audit import AuditReport, audit_books
from workers import runtime


def collect() -> dict[str, object]:
    with runtime.unit_of_work() as uow:
        session = uow.session
        accumulators = session.scalars(select(Accumulator).order_by(Accumulator.symbol)).all()
        executions = session.execute(
            select(
                Execution.symbol,
                Execution.side,
                Execution.status,
                func.count(),
                func.sum(Execution.quantity),
                func.sum(Execution.filled_quantity),
            )
            .group_by(Execution.symbol, Execution.side, Execution.status)
            .order_by(Execution.symbol, Execution.side, Execution.status)
        ).all()
        trades = session.execute(select(Trade.status, func.count()).group_by(Trade.status)).all()
        freezes = session.execute(select(SymbolFreeze.symbol, SymbolFreeze.reason, SymbolFreeze.source)).all()
    return {
        "trades": {status: count for status, count in trades},
        "accumulators": [
            {"symbol": a.symbol, "net_quantity": str(a.net_quantity), "updated_at": a.updated_at.isoformat()}
            for a in accumulators
        ],
        "executions": [
            {"symbol": s, "side": side, "status": st, "count": n, "quantity": str(q), "filled": str(f)}
            for s, side, st, n, q, f in executions
        ],
        "freezes": [{"symbol": s, "reason": r, "source": src} for s, r, src in freezes],
    }


def print_report(as_json: bool = False) -> None:
    data = collect()
    report = audit_books(runtime.unit_of_work(), runtime.settings().accumulation.threshold, runtime.now())
    if as_json:
        print(json.dumps({**data, "audit": report.as_json()}, indent=2))
        return
    console = Console()
    trades = data["trades"]
    assert isinstance(trades, dict)
    console.print("Trades: " + ", ".join(f"{status} {count}" for status, count in sorted(trades.items())))
    table = Table(title="Accumulators (residual net per symbol)")
    table.add_column("symbol")
    table.add_column("net quantity", justify="right")
    for row in data["accumulators"]:  # type: ignore[attr-defined]
        table.add_row(row["symbol"], canonical(Decimal(row["net_quantity"])))
    console.print(table)
    table = Table(title="Executions")
    for column in ("symbol", "side", "status", "orders", "shares", "filled"):
        table.add_column(column, justify="right" if column in ("orders", "shares", "filled") else "left")
    for row in data["executions"]:  # type: ignore[attr-defined]
        table.add_row(
            row["symbol"],
            row["side"],
            row["status"],
            str(row["count"]),
            _whole(row["quantity"]),
            _whole(row["filled"]),
        )
    console.print(table)
    if data["freezes"]:
        console.print("Frozen: " + ", ".join(f"{f['symbol']} ({f['reason']})" for f in data["freezes"]))  # type: ignore[attr-defined]
    print_audit(report, console)


def print_audit(report: AuditReport, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="Audit: trades = executed + in flight + residual")
    for column in ("symbol", "trades total", "executed", "in flight", "residual", "balanced"):
        table.add_column(column, justify="left" if column == "symbol" else "right")
    for s in report.symbols:
        table.add_row(
            s.symbol,
            canonical(s.trades_total),
            canonical(s.executed_total),
            canonical(s.in_flight_total),
            canonical(s.residual),
            "yes" if s.balanced else "[red]NO: " + "; ".join(s.problems) + "[/red]",
        )
    console.print(table)
    console.print("[green]audit ok[/green]" if report.ok else "[red]audit found imbalances[/red]")


def _whole(text: str) -> str:
    return canonical(Decimal(text))
