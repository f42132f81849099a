"""Operator endpoints that read the books: accumulators, executions, trades, audit, freezes, dust."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from models.domain.grammar import SYMBOL_PATTERN, TRADE_ID_PATTERN
from models.domain.quantities import canonical, money_text
from models.tables import Accumulator, DustLedger, Execution, Position, SymbolFreeze, Trade
from models.tables_ops import Lot
from tasks.audit import audit_books
from tasks.freezes import freeze_symbol, unfreeze_symbol
from tasks.lineage import FILLED_STATUSES, TradeExecution, is_completed, trade_executions, trade_ids_by_execution
from tasks.totals import ledger_totals
from workers import api_types, runtime
from workers.api_common import FreeText, Operator, body_schema, exact_body, execution_json, json_value
from workers.api_contract import responses

router = APIRouter(responses=responses(401, 408, 422, 503))
Symbol = Annotated[str, Path(pattern=SYMBOL_PATTERN)]
Limit = Annotated[api_types.Limit, Query()]


def _accumulator_json(row: Accumulator) -> dict[str, Any]:
    return {
        "symbol": row.symbol,
        "net_quantity": canonical(row.net_quantity),
        "updated_at": row.updated_at.isoformat(),
    }


@router.get("/accumulators")
def list_accumulators(
    _: Operator,
    after: Annotated[str | None, Query(pattern=SYMBOL_PATTERN, description="cursor: the last symbol seen")] = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    query = select(Accumulator).order_by(Accumulator.symbol).limit(limit)
    if after:
        query = query.where(Accumulator.symbol > after)
    with runtime.unit_of_work() as uow:
        items = [_accumulator_json(a) for a in uow.session.scalars(query)]
    return {"items": items, "next": items[-1]["symbol"] if len(items) == limit else None}


@router.get("/accumulators/{symbol:path}", responses=responses(404))  # :path: symbols such as BTC/USD contain a slash
def get_accumulator(symbol: Symbol, _: Operator) -> dict[str, Any]:
    with runtime.unit_of_work() as uow:
        row = uow.session.get(Accumulator, symbol)
        if row is None:
            raise HTTPException(404, f"no accumulator for {symbol}")
        return _accumulator_json(row)


@router.get("/executions")
def list_executions(
    _: Operator,
    symbol: Annotated[str | None, Query(pattern=SYMBOL_PATTERN)] = None,
    status: Annotated[str | None, Query(pattern=r"^[a-z_]{1,20}$")] = None,
    after: Annotated[api_types.Cursor | None, Query(description="cursor: the last item's cursor")] = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    query = select(Execution).order_by(Execution.seq).limit(limit)
    if symbol:
        query = query.where(Execution.symbol == symbol)
    if status:
        query = query.where(Execution.status == status)
    if after is not None:
        query = query.where(Execution.seq > after)
    with runtime.unit_of_work() as uow:
        rows = uow.session.scalars(query).all()
        trade_ids = trade_ids_by_execution(uow.session, [r.id for r in rows])
    items = [execution_json(r, trade_ids.get(r.id, [])) for r in rows]
    return {"items": items, "next": items[-1]["cursor"] if len(items) == limit else None}


@router.get("/trades/{trade_id}", responses=responses(404))
def get_trade(trade_id: Annotated[str, Path(pattern=TRADE_ID_PATTERN)], _: Operator) -> dict[str, Any]:
    with runtime.unit_of_work() as uow:
        trade = uow.session.get(Trade, trade_id)
        if trade is None:
            raise HTTPException(404, f"no trade {trade_id}")
        executions = trade_executions(uow.session, trade_id)
    fields = (
        "id",
        "symbol",
        "side",
        "quantity",
        "price",
        "executed_at",
        "received_at",
        "status",
        "status_reason",
    )
    completed = trade.status == "accumulated" and is_completed(trade.quantity, executions)
    return {
        **{f: json_value(getattr(trade, f)) for f in fields},
        "status": "completed" if completed else trade.status,
        "accumulated_at": json_value(trade.accumulated_at),
        "open_quantity": canonical(trade.open_quantity),
        "executions": [_trade_execution_json(e) for e in executions],
    }


def _trade_execution_json(share: TradeExecution) -> dict[str, Any]:
    execution = share.execution
    # A filled or partially filled execution is final: the transaction that recorded the broker's
    # fill (stamped when the broker answered) was its last write, so updated_at is the fill time.
    filled_at = execution.updated_at if execution.status in FILLED_STATUSES else None
    return {
        "execution_id": str(execution.id),
        "quantity": canonical(share.quantity),
        "filled_quantity": canonical(share.filled),
        "via_return": share.via_return,
        "status": execution.status,
        "created_at": json_value(execution.created_at),
        "submitted_at": json_value(execution.submitted_at),
        "filled_at": json_value(filled_at),
    }


@router.get("/audit")
def audit(_: Operator) -> dict[str, Any]:
    settings = runtime.settings()
    report = audit_books(
        runtime.unit_of_work(), settings.accumulation.threshold, runtime.now(), settings.audit.max_waiting_seconds
    )
    return report.as_json()


@router.get("/freezes")
def list_freezes(_: Operator) -> list[dict[str, Any]]:
    with runtime.unit_of_work() as uow:
        rows = uow.session.scalars(select(SymbolFreeze).order_by(SymbolFreeze.symbol)).all()
    return [
        {"symbol": r.symbol, "reason": r.reason, "source": r.source, "frozen_at": json_value(r.frozen_at)} for r in rows
    ]


class FreezeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: FreeText = "frozen by an operator"


@router.post("/freezes/{symbol:path}", status_code=201, openapi_extra=body_schema(FreezeIn, required=False))
def freeze(
    symbol: Symbol,
    _: Operator,
    response: Response,
    body: Annotated[FreezeIn, Depends(exact_body(FreezeIn, optional=True))],
) -> dict[str, Any]:
    created = freeze_symbol(runtime.unit_of_work(), symbol, body.reason, runtime.now())
    if not created:
        response.status_code = 200
    return {"symbol": symbol, "frozen": True, "created": created}


@router.delete("/freezes/{symbol:path}", status_code=204, responses=responses(404))
def unfreeze(symbol: Symbol, _: Operator) -> Response:
    if not unfreeze_symbol(runtime.unit_of_work(), symbol, runtime.now()):
        raise HTTPException(404, f"{symbol} is not frozen")
    return Response(status_code=204)


@router.get("/dust")
def dust(_: Operator, limit: Limit = 100) -> dict[str, Any]:
    volume = ledger_totals(runtime.unit_of_work())
    with runtime.unit_of_work() as uow:
        recent = uow.session.scalars(select(DustLedger).order_by(DustLedger.id.desc()).limit(limit)).all()
        orphaned = uow.session.scalars(select(Position).where(Position.status == "dust_orphaned")).all()
        lots = uow.session.scalars(select(Lot).where(Lot.status != "open").order_by(Lot.id.desc()).limit(limit)).all()
    ledger_fields = (
        "execution_id",
        "account",
        "symbol",
        "requested_notional",
        "price",
        "quantity",
        "proceeds",
        "dust",
        "unfilled_notional",
        "slippage",
    )
    return {
        "ledger": {
            "sales": volume.sales,
            "proceeds": money_text(volume.proceeds),
            "dust": money_text(volume.dust),
            "volume_with_dust": money_text(volume.volume_with_dust),
            "recent": [{f: json_value(getattr(r, f)) for f in ledger_fields} for r in recent],
        },
        "orphaned": [
            {"account": p.account, "symbol": p.symbol, "quantity": canonical(p.quantity), "status": p.status}
            for p in orphaned
        ],
        "lots": _lots_by_status(lots),
    }


def _lots_by_status(lots: Sequence[Lot]) -> dict[str, list[dict[str, Any]]]:
    """Dust lots and aggregates by status, newest first; an aggregated lot names its aggregate."""
    fields = ("id", "account", "symbol", "kind", "source", "quantity", "aggregate_id", "execution_id", "note")
    grouped: dict[str, list[dict[str, Any]]] = {}
    for lot in lots:
        grouped.setdefault(lot.status, []).append({f: json_value(getattr(lot, f)) for f in fields})
    return grouped
