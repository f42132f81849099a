"""The worker's broker consumer, reconnecting within seconds of the broker's return.

Celery's consumer reconnects through kombu's ``ensure_connection`` with its defaults: sleeps
of 2, 4, 6 ... up to 30 s between attempts, so after a minute-long Redis outage a worker
could idle for half a minute with Redis back. This consumer starts at about a second and caps
the sleep at ``RECONNECT_CAP_SECONDS``; the first sleep is jittered per attempt series, so a
fleet does not reconnect in lockstep. celeryconfig sets it (``worker_consumer``) and retries
without a limit (``broker_connection_max_retries = None``): an outage of any length is waited out.
"""

from __future__ import annotations

import random
from typing import Any

from celery.worker.consumer import Consumer

RECONNECT_CAP_SECONDS = 3.0


class PromptReconnectConsumer(Consumer):
    def ensure_connected(self, conn: Any) -> Any:
        ensure = conn.ensure_connection

        def ensure_promptly(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("interval_start", random.uniform(0.5, 1.0))
            kwargs.setdefault("interval_step", 0.5)
            kwargs.setdefault("interval_max", RECONNECT_CAP_SECONDS)
            return ensure(*args, **kwargs)

        conn.ensure_connection = ensure_promptly
        try:
            return super().ensure_connected(conn)
        finally:
            conn.ensure_connection = ensure
