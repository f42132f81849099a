"""The HTTP API: the signed trade webhook and the operator endpoints (SPEC section 3)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from workers import api_balances, api_books, api_orders, api_positions, api_webhook, metrics, runtime
from workers.api_access import AccessLog
from workers.api_common import Operator

log = logging.getLogger(__name__)
app = FastAPI(title="dustpan", version="0.1.0", description="Fractional trades in, exact whole-share orders out.")
app.add_middleware(api_webhook.WebhookFastPath)
app.add_middleware(AccessLog)  # added last: outermost, so the fast path is logged too
app.include_router(api_webhook.router)
app.include_router(api_books.router)
app.include_router(api_orders.router)
app.include_router(api_balances.router)
app.include_router(api_positions.router)


@app.exception_handler(RequestValidationError)
async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return JSONResponse({"error": "invalid_request", "details": details}, status_code=422)


@app.exception_handler(OperationalError)
async def _database_unavailable(_: Request, exc: OperationalError) -> JSONResponse:
    # Not the sender's fault and nothing was stored: tell them to retry the same delivery.
    log.error("database unavailable: %s", exc.orig)
    return JSONResponse(api_webhook.UNAVAILABLE, status_code=503)


@app.get("/metrics")
def prometheus_metrics(_: Operator) -> Response:
    # An operator endpoint (SPEC 3): it names symbols and nets. Prometheus sends the bearer
    # token with `authorization: {credentials: ...}` in its scrape config.
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


@app.get("/health/live")
def live() -> JSONResponse:
    """The process answers: what a container's healthcheck restarts on. A dependency outage
    is no reason to restart the API (it answers 503 meanwhile), so none is checked here."""
    return JSONResponse({"ok": True})


@app.get("/health/ready")
def ready() -> JSONResponse:
    """Whether it can take webhooks now: the database and the broker. The brokerage is
    reported but not required: trades are stored and netted while it is away."""
    components = _components()
    healthy = components["database"] == "ok" and components["broker"] == "ok"
    return JSONResponse({"ok": healthy, "components": components}, status_code=200 if healthy else 503)


@app.get("/health")
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
