"""A lean webhook client for the benches: raw HTTP/1.1 on asyncio streams, keep-alive connections.

A library client (httpx) spends more CPU per request than the API spends handling a one-trade
webhook, so on a 2-core machine it would measure itself. This one writes the request bytes and
reads the status line, headers and a Content-Length body, nothing else.

The body and its signature are exactly what ``workers.demo.post_batch`` (which tests call
``tests.support.feed.post_trades``) sends: ``json.dumps({"trades": trades})`` signed by
``workers.webhook.sign`` with the current unix time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from workers.webhook import sign

Trades = list[dict[str, str]]


class WebhookRefused(Exception):
    """The API answered something other than 202 with every trade accepted."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    sent: float  # time.perf_counter() when the request was written
    answered: float  # time.perf_counter() when the whole response was read


class WebhookConnection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, url: str, secret: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.secret = secret
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, trades: Trades) -> Answer:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        body = json.dumps({"trades": trades}).encode()
        timestamp = str(int(time.time()))
        head = (
            f"POST /webhooks/trades HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nX-Dustpan-Timestamp: {timestamp}\r\n"
            f"X-Dustpan-Signature: {sign(self.secret, timestamp, body)}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sent = time.perf_counter()
        self._writer.write(head.encode() + body)
        header_block = await self._reader.readuntil(b"\r\n\r\n")
        status, headers = _parse_head(header_block)
        if "content-length" not in headers:
            raise WebhookRefused(f"HTTP {status} without Content-Length: {headers}")
        payload = await self._reader.readexactly(int(headers["content-length"]))
        answered = time.perf_counter()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, json.loads(payload) if payload else {}, sent, answered)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):  # the server may have hung up first
                await self._writer.wait_closed()
        self._reader = self._writer = None


def _parse_head(block: bytes) -> tuple[int, dict[str, str]]:
    lines = block.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


def accepted_or_raise(answer: Answer, trades: Trades) -> Answer:
    if answer.status != 202 or answer.body.get("accepted") != len(trades):
        raise WebhookRefused(f"webhook answered {answer.status} {answer.body} for {len(trades)} trade(s)")
    return answer


# -- closed loop: each connection sends its share back to back -----------------------------------


@dataclass
class ClosedLoopRun:
    latencies_ms: list[float] = field(default_factory=list)
    finished: float = 0.0  # time.perf_counter() when the last answer was read


def post_closed_loop(url: str, secret: str, shares: Sequence[Sequence[Trades]]) -> ClosedLoopRun:
    """One connection per share, all at once; returns when every batch was accepted (raises on refusal)."""
    return asyncio.run(_closed_loop(url, secret, shares))


async def _closed_loop(url: str, secret: str, shares: Sequence[Sequence[Trades]]) -> ClosedLoopRun:
    run = ClosedLoopRun()

    async def send_share(batches: Sequence[Trades]) -> None:
        connection = WebhookConnection(url, secret)
        try:
            for batch in batches:
                answer = accepted_or_raise(await connection.post(batch), batch)
                run.latencies_ms.append((answer.answered - answer.sent) * 1000)
                run.finished = max(run.finished, answer.answered)
        finally:
            await connection.close()

    async with asyncio.TaskGroup() as group:  # the first failure cancels the others
        for share in shares:
            group.create_task(send_share(share))
    return run


# -- open loop: requests leave on a fixed schedule, whatever the answers do ---------------------


@dataclass
class OpenLoopRun:
    answers: list[Answer] = field(default_factory=list)  # in the order of the requests
    late_ms: list[float] = field(default_factory=list)  # how far behind its schedule each request left
    connections: int = 0


def post_open_loop(url: str, secret: str, requests: Sequence[Trades], rate: float, connections: int) -> OpenLoopRun:
    """Send request i at start + i / rate on an idle keep-alive connection; open one more while fewer
    than ``connections`` exist, else wait for one to be free (the wait shows in ``late_ms``)."""
    return asyncio.run(_open_loop(url, secret, requests, rate, connections))


async def _open_loop(url: str, secret: str, requests: Sequence[Trades], rate: float, cap: int) -> OpenLoopRun:
    run = OpenLoopRun()
    answers: list[Answer | None] = [None] * len(requests)
    idle: asyncio.Queue[WebhookConnection] = asyncio.Queue()
    every: list[WebhookConnection] = []

    async def send(n: int, connection: WebhookConnection) -> None:
        answers[n] = accepted_or_raise(await connection.post(requests[n]), requests[n])
        idle.put_nowait(connection)

    try:
        async with asyncio.TaskGroup() as group:
            start = time.perf_counter()
            for n in range(len(requests)):
                due = start + n / rate
                if due > time.perf_counter():
                    await asyncio.sleep(due - time.perf_counter())
                if idle.empty() and len(every) < cap:
                    every.append(WebhookConnection(url, secret))
                    idle.put_nowait(every[-1])
                connection = await idle.get()
                run.late_ms.append(max(0.0, time.perf_counter() - due) * 1000)
                group.create_task(send(n, connection))
    finally:
        for connection in every:
            await connection.close()
    run.answers = [answer for answer in answers if answer is not None]
    run.connections = len(every)
    return run
