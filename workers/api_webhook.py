"""``POST /webhooks/trades``: signed trades in, 202 once they are committed (SPEC section 3).

The hot path of the API, built for one-trade webhooks arriving by the thousand a second:

- ``WebhookFastPath`` answers it straight from the ASGI scope, ahead of FastAPI's routing,
  dependency and exception layers, which cost more CPU than the webhook's own work. The
  FastAPI route below is the same handler, documented in the OpenAPI schema.
- The webhooks that arrive while a group commits are stored together by the next one
  (``GroupCommit``): one INSERT, committed as it returns, for the whole group. Each webhook
  is answered with its own counts once that commit has returned.
- Waking the workers and counting the responses happen after the commit, off the webhooks'
  way, on two more threads that batch them too (the counts at most every 0.1 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from models.domain.trades import IncomingTrade
from tasks.ingestion import StoreResult, store_webhooks
from tasks.log_context import log_context
from workers import logging_setup, metrics, runtime
from workers.api_common import body_schema
from workers.api_contract import responses, unavailable
from workers.group_commit import GroupCommit
from workers.webhook import PayloadError, TradesIn, read_trades, verify_signature

log = logging.getLogger(__name__)
PATH = "/webhooks/trades"
# Trades per group transaction: a few hundred-trade webhooks, or many one-trade ones.
GROUP_MAX_TRADES = 2000
CLIENT_GONE = 499  # nginx's "client closed request", for the metrics: no one receives it
METRICS_PAUSE_SECONDS = 0.1  # float-ok: a duration

router = APIRouter()


def _documented_request() -> dict[str, Any]:
    """The body and signature headers, for /openapi.json (the handler reads the raw bytes itself)."""
    headers = [
        ("X-Dustpan-Timestamp", "unix seconds, within webhook.tolerance_seconds of now", r"^[0-9]{1,12}$"),
        ("X-Dustpan-Signature", 'v1=<hex HMAC-SHA256 of "{timestamp}." + raw body>, comma-separated', None),
    ]
    parameters = [
        {"name": name, "in": "header", "required": True, "description": text, "schema": {"type": "string"}}
        | ({"schema": {"type": "string", "pattern": pattern}} if pattern else {})
        for name, text, pattern in headers
    ]
    return {**body_schema(TradesIn), "parameters": parameters}


@router.post(PATH, status_code=202, responses=responses(401, 408, 413, 422, 503), openapi_extra=_documented_request())
async def receive_trades(request: Request) -> Response:
    started, status, result = time.perf_counter_ns(), 500, None
    try:
        response, result = await _accept_trades(request)
        status = response.status_code
        return response
    except OperationalError as exc:
        # Not the sender's fault: tell them to retry the same delivery. Should the INSERT have
        # committed before the connection broke, the retry finds its trades as duplicates, as
        # any re-delivery after a lost answer does.
        log.error("database unavailable: %s", exc.orig)
        status = 503
        body, headers = unavailable("database")
        return JSONResponse(body, status_code=503, headers=headers)
    except ClientDisconnect:
        # One line, no traceback; the body was not complete, so nothing of it was stored.
        client = request.client.host if request.client else "?"
        log.warning("client %s disconnected before its webhook body was complete; nothing stored", client)
        status = CLIENT_GONE
        return Response(status_code=400)
    finally:
        threads = _threads_of_this_loop()
        if result is not None and result.symbols:
            threads.wakes.post((logging_setup.current_request_id(), result.symbols))
        threads.counts.post(_Answered(status, result, time.perf_counter_ns() - started))


class WebhookFastPath:
    """ASGI middleware: ``POST /webhooks/trades`` goes to ``receive_trades`` directly."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PATH:
            response = await receive_trades(Request(scope, receive))
            await response(scope, receive, send)
        else:
            await self.app(scope, receive, send)


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
    result = await _threads_of_this_loop().writer.submit(trades)
    return JSONResponse(
        {"accepted": result.accepted, "duplicates": result.duplicates, "conflicts": result.conflicts},
        status_code=202,
    ), result


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


# --- the batching threads ------------------------------------------------------------------


def _store(webhooks: list[list[IncomingTrade]]) -> list[StoreResult]:
    return store_webhooks(runtime.unit_of_work(autocommit=True), webhooks)


def _wake(symbol_lists: list[tuple[str | None, list[str]]]) -> list[None]:
    # A hint: the trades are committed, and what a failure here misses the sweep finds. Each
    # symbol is woken once, under the id of the first request that brought it, so that the
    # task's log lines name a request that caused it.
    from workers.celery_app import enqueue  # the Celery app loads on the first wake, not at import

    woken: set[str] = set()
    for request_id, symbols in symbol_lists:
        fresh = sorted(set(symbols) - woken)
        woken.update(fresh)
        if fresh:
            with log_context(request_id=request_id):
                enqueue.wake(fresh)
    return [None] * len(symbol_lists)


@dataclass(frozen=True)
class _Answered:
    status: int
    result: StoreResult | None
    elapsed_ns: int


def _count(answered: list[_Answered]) -> list[None]:
    metrics.record_webhooks([(a.status, a.result, a.elapsed_ns) for a in answered])
    return [None] * len(answered)


@dataclass(frozen=True)
class _Threads:
    """One of each per event loop (one loop per API process in production)."""

    writer: GroupCommit[list[IncomingTrade], StoreResult]
    wakes: GroupCommit[tuple[str | None, list[str]], None]
    counts: GroupCommit[_Answered, None]


_threads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Threads] = weakref.WeakKeyDictionary()


def _threads_of_this_loop() -> _Threads:
    loop = asyncio.get_running_loop()
    threads = _threads.get(loop)
    if threads is None:
        threads = _threads[loop] = _Threads(
            GroupCommit(
                _store,
                size=len,
                max_size=GROUP_MAX_TRADES,
                # A database outage fails the whole group (503 each); anything else may be one
                # webhook's own doing, so each is stored again alone (were the INSERT committed
                # already, those trades come back as duplicates: the data is right either way).
                isolate=lambda error: not isinstance(error, OperationalError),
                name="trade-writer",
            ),
            GroupCommit(_wake, isolate=lambda _: False, name="wake"),
            # Counters may lag: one Redis pipeline per pause at most, whatever the request rate.
            GroupCommit(_count, isolate=lambda _: False, pause_seconds=METRICS_PAUSE_SECONDS, name="metrics"),
        )
    return threads
