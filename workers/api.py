"""The HTTP API: the signed trade webhook and the operator endpoints (SPEC section 3)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from models.domain.trades import IncomingTrade
from tasks.ingestion import StoreResult, store_trades
from workers import api_balances, api_books, api_orders, metrics, runtime
from workers.api_common import Operator
from workers.webhook import PayloadError, read_trades, verify_signature

log = logging.getLogger(__name__)
app = FastAPI(title="dustpan", version="0.1.0", description="Fractional trades in, exact whole-share orders out.")
app.include_router(api_books.router)
app.include_router(api_orders.router)
app.include_router(api_balances.router)


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
    started, status, result = time.perf_counter_ns(), 500, None
    try:
        response, result = await _accept_trades(request)
        status = response.status_code
        return response
    except OperationalError:
        status = 503  # answered by _database_unavailable
        raise
    finally:
        await run_in_threadpool(metrics.record_webhook, status, result, time.perf_counter_ns() - started)


async def _accept_trades(request: Request) -> tuple[JSONResponse, StoreResult | None]:
    config = runtime.settings()
    body = await _read_capped_body(request, config.webhook.max_body_bytes)
    if body is None:
        return _error(413, "payload_too_large", message=f"body exceeds {config.webhook.max_body_bytes} bytes"), None
    refusal = verify_signature(
        config.webhook_secret,
        request.headers.get("x-dustpan-timestamp"),
        request.headers.get("x-dustpan-signature"),
        body,
        int(time.time()),
        config.webhook.tolerance_seconds,
    )
    if refusal:
        return _error(401, "invalid_signature", message=refusal), None
    try:
        trades = read_trades(body, config.webhook.max_trades)
    except PayloadError as exc:
        return _error(422, "invalid_payload", details=exc.details), None
    result = await run_in_threadpool(_store_and_wake, trades)
    return JSONResponse(
        {"accepted": result.accepted, "duplicates": result.duplicates, "conflicts": result.conflicts},
        status_code=202,
    ), result


def _store_and_wake(trades: list[IncomingTrade]) -> StoreResult:
    # One trip to the thread pool for both: each trip costs the event loop as much as the
    # handler's own work on a one-trade webhook.
    result = store_trades(runtime.unit_of_work(), trades)
    # Only now, with the trades committed, is anyone told about them.
    runtime.wake_symbols(result.symbols)
    return result


@app.get("/metrics")
def prometheus_metrics(_: Operator) -> Response:
    # An operator endpoint (SPEC 3): it names symbols and nets. Prometheus sends the bearer
    # token with `authorization: {credentials: ...}` in its scrape config.
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


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
