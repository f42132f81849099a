"""The API's HTTP protocol: uvicorn's own, plus deadlines for slow clients (SPEC section 3).

uvicorn closes idle keep-alive connections, but not a request under way: a client that sends
its headers a byte at a time, or never finishes its body, holds its connection (and one of the
``limit_concurrency`` slots) for ever. This protocol gives a request's headers
``http.header_timeout_seconds`` from the connection (or from the first byte of a next request
on a kept-alive one) and its body ``http.body_timeout_seconds`` from the end of its headers.
Past either, the client gets a 408 if no answer has started, and the connection is closed; an
application still reading the body then sees a disconnect and applies nothing.

Chosen with ``uvicorn.run(http="workers.http_server:DeadlineProtocol")``; it extends uvicorn's
httptools protocol (or the h11 one where httptools is not installed).
"""

from __future__ import annotations

import asyncio
import logging
from functools import lru_cache
from typing import Any

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _ServerProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is uvicorn's fallback
    from uvicorn.protocols.http.h11_impl import H11Protocol as _ServerProtocol  # type: ignore[assignment]

log = logging.getLogger("workers.api")
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n"
)


@lru_cache(maxsize=1)
def _timeouts() -> tuple[float, float]:  # float-ok: seconds for the event loop's timers
    from workers.settings import get_settings

    http = get_settings().http
    return float(http.header_timeout_seconds), float(http.body_timeout_seconds)  # float-ok: seconds


class DeadlineProtocol(_ServerProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._timed_cycle: Any = None
        self._arm("headers", _timeouts()[0])

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if self._phase != "headers":  # the first bytes of a next request on this connection
                self._arm("headers", _timeouts()[0])
        elif cycle.more_body:
            if self._timed_cycle is not cycle:  # its headers just completed
                self._timed_cycle = cycle
                self._arm("body", _timeouts()[1])
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str, seconds: float) -> None:  # float-ok: seconds
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
        self._deadline, self._phase = None, None

    def _expired(self, phase: str, seconds: float) -> None:  # float-ok: seconds
        self._deadline, self._phase = None, None
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
        log.warning("closing the connection of %s: request %s not complete within %g s", client, phase, seconds)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()
