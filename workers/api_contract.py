"""What /openapi.json promises beyond the routes: error answers, and /docs and /redoc served locally.

Each router declares the status codes its endpoints can answer with ``responses(...)``, so a
client generated from the document knows every refusal's shape. The documentation pages load
Swagger UI and ReDoc from the assets the ``fastapi-offline`` package ships, served by the API
itself: /docs works on a machine with no internet access.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_PATH = "/docs-assets"
RETRY_AFTER_SECONDS = 5  # an outage of the database or the brokerage: retry soon, not at once


class FieldProblem(BaseModel):
    field: str
    problem: str


class InvalidPayload(BaseModel):
    error: Literal["invalid_payload"]
    details: list[FieldProblem]


class ErrorOut(BaseModel):
    error: str
    message: str


class DetailOut(BaseModel):
    detail: str


class DustCapExceeded(BaseModel):
    error: Literal["dust_cap_exceeded"]
    cap: str
    would_be_dust: str
    message: str


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_ANSWERS: dict[int, dict[str, Any]] = {
    401: {"model": DetailOut, "description": "missing or invalid credentials"},
    404: {"model": DetailOut, "description": "no such item"},
    408: {"description": "headers or body not complete in time; the connection is closed"},
    409: {"model": ErrorOut, "description": "refused by the state of the books (frozen, insufficient position)"},
    413: {"model": ErrorOut, "description": "body too large"},
    422: {"model": InvalidPayload, "description": "invalid input, naming each field; nothing was stored"},
    503: {"model": ErrorOut, "description": "database or brokerage unavailable; retry", "headers": _RETRY_AFTER},
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error codes, for a router or a route."""
    return {code: _ANSWERS[code] for code in codes}


def order_responses() -> dict[int | str, dict[str, Any]]:
    """Sales and exits: a 422 is also a refusal of the order itself (dust cap, venue rules, account)."""
    refused = {
        "model": InvalidPayload | DustCapExceeded | ErrorOut,
        "description": "invalid input (naming each field), or an order the venue or the dust cap refuses",
    }
    return {**responses(401, 408, 409, 503), 422: refused}


def unavailable(what: str) -> tuple[dict[str, str], dict[str, str]]:
    """Body and headers of a 503 for an outage of ``what``."""
    return (
        {"error": "unavailable", "message": f"{what} unavailable, retry"},
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def serve_local_docs(app: FastAPI) -> None:
    """/docs and /redoc from packaged assets (the app is built with docs_url=redoc_url=None)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
