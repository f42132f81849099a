"""The API's own log lines (SPEC section 3): one at start-up, one access line per request.

Every request gets an id: the caller's ``X-Request-ID`` when it is a plain token, else a new
one. It is answered in the ``X-Request-ID`` header, bound to the request's log lines and
carried in the headers of the tasks it enqueues (``workers.celery_app``), so the workers'
lines for those tasks name it too. An access line holds the method, the path (no query
string), the status and the duration, never a header, a body or a secret.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasks.log_context import log_context

log = logging.getLogger("dustpan.access")
HEADER = b"x-request-id"
# A caller's id is kept only if it is a plain token: it goes into logs and headers as is.
CALLER_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


class AccessLog:
    """ASGI middleware, outermost: it sees every request, the webhook fast path included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = time.perf_counter()
        status = 500  # what the client sees should the app fail before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (HEADER, request_id.encode())]
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                _log_access(scope["method"], scope["path"], status, time.perf_counter() - started)


def _log_access(method: str, path: str, status: int, seconds: float) -> None:  # float-ok: a duration
    duration_ms = round(seconds * 1000, 1)  # float-ok: a duration
    fields = {"method": method, "path": path, "status": status, "duration_ms": duration_ms}
    log.info("%s %s %s %.1f ms", method, path, status, duration_ms, extra=fields)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == HEADER and CALLER_ID.match(value):
            return str(value.decode())
    return uuid.uuid4().hex


def log_startup(address: str, version: str, database_url: str | None, workers: int) -> None:
    from workers.cli_errors import without_credentials

    database = without_credentials(database_url) if database_url else "not set"
    startup = logging.getLogger("dustpan.api")
    startup.info("dustpan %s API listening on %s (database %s, %d process(es))", version, address, database, workers)
