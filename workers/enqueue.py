"""The ``Enqueue`` port over Redis and Celery (the protocol is explained once, in tasks.ports).

Messages are sent by task name (``app.send_task``) with the routes of celeryconfig, so a
process that only enqueues (the API) never imports the task modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis

from tasks.ports import Enqueue

log = logging.getLogger(__name__)
WAKE_KEY = "dustpan:wake:{symbol}"
WAKE_TTL_SECONDS = 30
BOUNCE_TTL_SECONDS = 30
# A healthy fleet starts a queued run within milliseconds, and the run lowers its flag. A flag
# raised longer ago than this may stand for a message a killed worker took off the queue and
# never ran: the next trade of the symbol sends another run then, so the symbol's trades wait
# about a second, not for the sweep. At most once per WAKE_RESEND_HOLD_SECONDS per symbol, so a
# queue backed up for longer than this gets one message more per symbol now and then, never one
# per trade or per second.
WAKE_LOST_AFTER_MS = 1000
WAKE_RESEND_HOLD_SECONDS = 10
WAKE_RESEND_KEY = "dustpan:wake-resent:{symbol}"
# KEYS: the wake flag, the resend hold. ARGV: now (ms), lost after (ms), flag TTL, hold (s).
# 1: send a run (the flag was down, or it stood too long and no resend is on hold); 0: don't.
_WAKE_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then return 1 end
local raised = tonumber(redis.call('GET', KEYS[1]))
if raised and tonumber(ARGV[1]) - raised >= tonumber(ARGV[2])
    and redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[4]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
"""
_WAKE_SHA = hashlib.sha1(_WAKE_SCRIPT.encode()).hexdigest()  # Redis names scripts by their SHA-1
BOUNCED_KEY = "dustpan:bounced:{symbol}"
RESEND_KEY = "dustpan:resend:{kind}:{name}"


class RedisEnqueue(Enqueue):
    def __init__(
        self,
        client: Callable[[], redis.Redis],
        send_task: Callable[..., Any],
        queues: dict[str, str],
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        """``queues`` maps a hot symbol to its own ingestion queue (accumulation.queues)."""
        self._client, self._send_task, self._queues, self._now_ms = client, send_task, queues, now_ms

    def wake(self, symbols: Iterable[str]) -> None:
        client = self._client()
        for symbol in symbols:
            try:
                if self._raise_flag(client, symbol):
                    # No delay: trades arriving while a run is under way raise the flag again,
                    # and that run asks for the next one, which takes them all in one claim.
                    self.accumulate(symbol)
            except Exception as exc:  # redis and kombu raise several families; none may fail the webhook
                log.warning("wake for %s not sent (the sweep will pick it up): %s", symbol, exc)
                return

    def _raise_flag(self, client: redis.Redis, symbol: str) -> bool:
        keys = (WAKE_KEY.format(symbol=symbol), WAKE_RESEND_KEY.format(symbol=symbol))
        args = (self._now_ms(), WAKE_LOST_AFTER_MS, WAKE_TTL_SECONDS, WAKE_RESEND_HOLD_SECONDS)
        try:
            return bool(client.evalsha(_WAKE_SHA, 2, *keys, *args))
        except redis.exceptions.NoScriptError:  # a Redis that restarted or never saw it: one EVAL loads it
            return bool(client.eval(_WAKE_SCRIPT, 2, *keys, *args))

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
