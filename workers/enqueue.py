"""The ``Enqueue`` port over Redis and Celery (the protocol is explained once, in tasks.ports).

Messages are sent by task name (``app.send_task``) with the routes of celeryconfig, so a
process that only enqueues (the API) never imports the task modules.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis

from tasks.ports import Enqueue

log = logging.getLogger(__name__)
WAKE_KEY = "dustpan:wake:{symbol}"
# How long a raised wake flag stands for the run it queued. A healthy fleet starts that run
# within milliseconds (and lowers the flag); a message a dead worker took off the queue and never
# ran would hold its symbol's trades back until the flag lapsed, so it lapses soon: the next
# trade after it sends another run. A queue backed up for longer gets at most one run more per
# symbol per this many seconds, which finds the trades claimed or takes the ones still waiting.
WAKE_TTL_SECONDS = 1
BOUNCE_TTL_SECONDS = 30
BOUNCED_KEY = "dustpan:bounced:{symbol}"
RESEND_KEY = "dustpan:resend:{kind}:{name}"


class RedisEnqueue(Enqueue):
    def __init__(
        self, client: Callable[[], redis.Redis], send_task: Callable[..., Any], queues: dict[str, str]
    ) -> None:
        """``queues`` maps a hot symbol to its own ingestion queue (accumulation.queues)."""
        self._client, self._send_task, self._queues = client, send_task, queues

    def wake(self, symbols: Iterable[str]) -> None:
        client = self._client()
        for symbol in symbols:
            try:
                if client.set(WAKE_KEY.format(symbol=symbol), 1, nx=True, ex=WAKE_TTL_SECONDS):
                    # No delay: trades arriving while a run is under way raise the flag again,
                    # and that run asks for the next one, which takes them all in one claim.
                    self.accumulate(symbol)
            except Exception as exc:  # redis and kombu raise several families; none may fail the webhook
                log.warning("wake for %s not sent (the sweep will pick it up): %s", symbol, exc)
                return

    def accumulate(self, symbol: str) -> None:
        # A hot symbol may have its own queue, so a burst never delays the others.
        self._send_task("ingestion.accumulate", (symbol,), queue=self._queues.get(symbol, "ingestion"))

    def submit(self, execution_ids: Iterable[uuid.UUID]) -> None:
        for execution_id in execution_ids:
            try:
                self._send_task("execution.submit", (str(execution_id),))
            except Exception as exc:  # kombu raises several families; none of them may fail the caller
                log.warning("execution %s not enqueued (the sweep will pick it up): %s", execution_id, exc)

    def clear_wake(self, symbol: str) -> None:
        try:
            self._client().delete(WAKE_KEY.format(symbol=symbol))
        except (redis.RedisError, OSError) as exc:
            log.warning("wake flag for %s not cleared (it expires by itself): %s", symbol, exc)

    def note_bounced(self, symbol: str) -> None:
        try:
            self._client().set(BOUNCED_KEY.format(symbol=symbol), 1, ex=BOUNCE_TTL_SECONDS)
        except (redis.RedisError, OSError) as exc:
            log.warning("bounce for %s not noted (the sweep will pick it up): %s", symbol, exc)

    def take_bounced(self, symbol: str) -> bool:
        try:
            return bool(self._client().delete(BOUNCED_KEY.format(symbol=symbol)))
        except (redis.RedisError, OSError) as exc:
            log.warning("bounce note for %s not read (the sweep will pick it up): %s", symbol, exc)
            return False

    def resend_stale(self, symbols: list[str], execution_ids: list[uuid.UUID], hold_seconds: int) -> int:
        # A deep queue makes everything in it look stranded, and a message per sweep tick for
        # each would only deepen it: each item at most once per hold_seconds.
        work: list[tuple[str, str, Callable[[], object]]] = [
            *(("accumulate", symbol, lambda s=symbol: self.accumulate(s)) for symbol in symbols),
            *(("submit", e.hex, lambda e=e: self._send_task("execution.submit", (str(e),))) for e in execution_ids),
        ]
        client, sent = self._client(), 0
        for kind, name, send in work:
            hold = RESEND_KEY.format(kind=kind, name=name)
            if client.set(hold, 1, nx=True, ex=hold_seconds):
                try:
                    send()
                except Exception:
                    with contextlib.suppress(Exception):  # not sent: the next sweep may send it at once
                        client.delete(hold)
                    raise  # the broker is away: the sweep fails, and its caller retries it promptly
                sent += 1
        return sent
