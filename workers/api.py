"""The HTTP API: the signed trade webhook and the operator endpoints (SPEC section 3)."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import ClientDisconnect

from tasks.ports import BrokerageError, InvalidOrder, NotFound, RateLimited
from workers import api_balances, api_books, api_orders, api_positions, api_webhook, metrics, runtime
from workers.api_access import AccessLog
from workers.api_common import Operator
from workers.api_contract import responses, serve_local_docs, unavailable
from workers.api_types import invalid_payload

log = logging.getLogger(__name__)
app = FastAPI(
    title="dustpan",
    version="0.1.0",
    description="Fractional trades in, exact whole-share orders out.",
    docs_url=None,  # served from packaged assets below, not from a CDN
    redoc_url=None,
)
app.add_middleware(api_webhook.WebhookFastPath)
app.add_middleware(AccessLog)  # added last: outermost, so the fast path is logged too
app.include_router(api_webhook.router)
app.include_router(api_books.router)
app.include_router(api_orders.router)
app.include_router(api_balances.router)
app.include_router(api_positions.router)
serve_local_docs(app)


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(invalid_payload(exc.errors()), status_code=422)


@app.exception_handler(OperationalError)
@app.exception_handler(InterfaceError)
@app.exception_handler(PoolTimeout)
async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    # Not the client's fault and nothing was stored: tell them to retry the same request.
    log.error("database unavailable: %s", getattr(exc, "orig", None) or exc)
    body, headers = unavailable("database")
    return JSONResponse(body, status_code=503, headers=headers)


@app.exception_handler(redis.ConnectionError)
@app.exception_handler(redis.TimeoutError)
async def _broker_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.error("Celery broker (Redis) unavailable: %s", exc)
    body, headers = unavailable("Celery broker")
    return JSONResponse(body, status_code=503, headers=headers)


@app.exception_handler(BrokerageError)
async def _brokerage_unavailable(_: Request, exc: BrokerageError) -> JSONResponse:
    if isinstance(exc, InvalidOrder | NotFound):  # the brokerage refused or does not know what was asked
        return JSONResponse({"error": "not_tradable", "message": str(exc)}, status_code=422)
    log.warning("brokerage unavailable: %s", exc)
    body, headers = unavailable("brokerage")
    if isinstance(exc, RateLimited) and exc.retry_after:
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(body, status_code=503, headers=headers)


@app.exception_handler(ClientDisconnect)
async def _client_gone(request: Request, _: ClientDisconnect) -> Response:
    # One line, no traceback: a client that hangs up mid-body is not our error, and nothing
    # it sent was applied (the body is read whole before anything is written).
    client = request.client.host if request.client else "?"
    log.warning(
        "client %s disconnected before its request body was complete: %s %s", client, request.method, request.url.path
    )
    return Response(status_code=400)  # never delivered: nobody is listening


@app.get("/metrics", responses=responses(401, 408, 503))
def prometheus_metrics(_: Operator) -> Response:
    # An operator endpoint (SPEC 3): it names symbols and nets. Prometheus sends the bearer
    # token with `authorization: {credentials: ...}` in its scrape config.
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


@app.get("/health/live")
def live() -> JSONResponse:
    """The process answers: what a container's healthcheck restarts on. A dependency outage
    is no reason to restart the API (it answers 503 meanwhile), so none is checked here."""
    return JSONResponse({"ok": True})


@app.get("/health/ready", responses=responses(503))
def ready() -> JSONResponse:
    """Whether it can take webhooks now: the database and the broker. The brokerage is
    reported but not required: trades are stored and netted while it is away."""
    components = _components()
    healthy = components["database"] == "ok" and components["broker"] == "ok"
    return JSONResponse({"ok": healthy, "components": components}, status_code=200 if healthy else 503)


@app.get("/health", responses=responses(503))
def health() -> JSONResponse:
    components = _components()
    healthy = all(v == "ok" for v in components.values())
    return JSONResponse({"ok": healthy, "components": components}, status_code=200 if healthy else 503)


def _components() -> dict[str, str]:
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
    return components
