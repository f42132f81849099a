"""The HTTP API: the signed trade webhook and the operator endpoints (SPEC section 3)."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from models.tables import Accumulator, Contribution, Execution, Trade
from tasks.audit import audit_books
from tasks.ingestion import store_trades
from workers import runtime
from workers.webhook import PayloadError, read_trades, verify_signature

log = logging.getLogger(__name__)
app = FastAPI(
    title="dustpan", version="0.1.0", description="Fractional trades in, exact whole-share orders out."
)


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse({"error": "invalid_request", "details": details}, status_code=422)


@app.exception_handler(OperationalError)
async def _database_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
    # Not the sender's fault and nothing was stored: tell them to retry the same delivery.
    log.error("database unavailable: %s", exc.orig)
    return JSONResponse({"error": "unavailable", "message": "database unavailable, retry"}, status_code=503)


def _error(status: int, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status)


async def _read_capped_body(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@app.post("/webhooks/trades", status_code=202)
async def receive_trades(request: Request) -> JSONResponse:
    config = runtime.settings()
    body = await _read_capped_body(request, config.webhook.max_body_bytes)
    if body is None:
        return _error(413, "payload_too_large", message=f"body exceeds {config.webhook.max_body_bytes} bytes")
    refusal = verify_signature(
        config.webhook_secret,
        request.headers.get("x-dustpan-timestamp"),
        request.headers.get("x-dustpan-signature"),
        body,
        int(time.time()),
        config.webhook.tolerance_seconds,
    )
    if refusal:
        return _error(401, "invalid_signature", message=refusal)
    try:
        trades = read_trades(body, config.webhook.max_trades)
    except PayloadError as exc:
        return _error(422, "invalid_payload", details=exc.details)
    result = await run_in_threadpool(store_trades, runtime.unit_of_work(), trades)
    # Only now, with the trades committed, is anyone told about them.
    await run_in_threadpool(runtime.wake_symbols, result.symbols)
    return JSONResponse(
        {"accepted": result.accepted, "duplicates": result.duplicates, "conflicts": result.conflicts},
        status_code=202,
    )


def require_operator(request: Request) -> None:
    token = runtime.settings().api_token or ""
    header = request.headers.get("authorization", "")
    offered = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not token or not hmac.compare_digest(offered.encode(), token.encode()):
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


Operator = Annotated[None, Depends(require_operator)]


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _accumulator_json(row: Accumulator) -> dict[str, Any]:
    return {
        "symbol": row.symbol,
        "net_quantity": str(row.net_quantity),
        "updated_at": row.updated_at.isoformat(),
    }


@app.get("/accumulators")
def list_accumulators(_: Operator) -> list[dict[str, Any]]:
    with runtime.unit_of_work() as uow:
        return [
            _accumulator_json(a)
            for a in uow.session.scalars(select(Accumulator).order_by(Accumulator.symbol))
        ]


@app.get("/accumulators/{symbol}")
def get_accumulator(symbol: str, _: Operator) -> dict[str, Any]:
    with runtime.unit_of_work() as uow:
        row = uow.session.get(Accumulator, symbol)
        if row is None:
            raise HTTPException(404, f"no accumulator for {symbol}")
        return _accumulator_json(row)


def _execution_json(row: Execution, trade_ids: list[str]) -> dict[str, Any]:
    fields = (
        "id",
        "symbol",
        "side",
        "quantity",
        "status",
        "client_order_id",
        "broker_order_id",
        "filled_quantity",
        "average_price",
        "created_at",
        "updated_at",
    )
    return {
        **{f: _json_value(getattr(row, f)) for f in fields},
        "trade_ids": trade_ids,
        "cursor": str(row.seq),
    }


@app.get("/executions")
def list_executions(
    _: Operator,
    symbol: str | None = None,
    status: str | None = None,
    after: Annotated[int | None, Query(ge=0, description="cursor: the last item's cursor")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
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
        links = uow.session.execute(
            select(Contribution.execution_id, Contribution.trade_id).where(
                Contribution.execution_id.in_([r.id for r in rows]), Contribution.trade_id.is_not(None)
            )
        ).all()
    trade_ids: dict[uuid.UUID, list[str]] = {}
    for execution_id, trade_id in links:
        trade_ids.setdefault(execution_id, []).append(str(trade_id))
    items = [_execution_json(r, trade_ids.get(r.id, [])) for r in rows]
    return {"items": items, "next": items[-1]["cursor"] if len(items) == limit else None}


@app.get("/trades/{trade_id}")
def get_trade(trade_id: str, _: Operator) -> dict[str, Any]:
    with runtime.unit_of_work() as uow:
        trade = uow.session.get(Trade, trade_id)
        if trade is None:
            raise HTTPException(404, f"no trade {trade_id}")
        contributions = uow.session.execute(
            select(Contribution.execution_id, Contribution.quantity).where(Contribution.trade_id == trade_id)
        ).all()
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
    return {
        **{f: _json_value(getattr(trade, f)) for f in fields},
        "open_quantity": str(trade.open_quantity),
        "executions": [{"execution_id": str(e), "quantity": str(q)} for e, q in contributions],
    }


@app.get("/audit")
def audit(_: Operator) -> dict[str, Any]:
    return audit_books(
        runtime.unit_of_work(), runtime.settings().accumulation.threshold, runtime.now()
    ).as_json()


@app.get("/health")
def health() -> JSONResponse:
    components: dict[str, str] = {}
    try:
        with runtime.unit_of_work() as uow:
            uow.session.execute(text("SELECT 1"))
        components["database"] = "ok"
    except Exception as exc:  # health reports any failure instead of failing itself
        components["database"] = f"error: {type(exc).__name__}"
    try:
        runtime.redis_client().ping()
        components["broker"] = "ok"
    except Exception as exc:
        components["broker"] = f"error: {type(exc).__name__}"
    try:
        runtime.brokerage().ping()
        components["brokerage"] = "ok"
    except Exception as exc:
        components["brokerage"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in components.values())
    return JSONResponse({"ok": healthy, "components": components}, status_code=200 if healthy else 503)
