"""Which errors mean "a dependency is away": PostgreSQL or the broker, not the task's own fault.

A task that meets one is retried with capped jittered backoff (``tasks.deps.DustpanTask``);
every task is safe to run twice, so a retry never doubles anything. The broker's own client
library stays out of this package: the composition root passes its connection errors in
(``Dependencies.broker_errors``); kombu's (what Celery raises on a failed publish) are known here.
"""

from __future__ import annotations

import random

from kombu.exceptions import OperationalError as BrokerOperationalError
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError
from sqlalchemy.exc import OperationalError as DatabaseOperationalError

DATABASE = "PostgreSQL"
BROKER = "Redis"
OUTAGE_RETRY_CAP_SECONDS = 10  # back within seconds of the dependency's return, not minutes


def dependency_away(exc: BaseException, broker_errors: tuple[type[BaseException], ...] = ()) -> str | None:
    """The dependency whose outage ``exc`` (or an error it was raised from) reports, or None."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (DatabaseOperationalError, InterfaceError, DisconnectionError)):
            return DATABASE
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return DATABASE
        if isinstance(error, BrokerOperationalError) or (broker_errors and isinstance(error, broker_errors)):
            return BROKER
        error = error.__cause__ or error.__context__
    return None


def outage_retry_delay(retries: int, cap: int) -> int:
    """Seconds before the next attempt: exponential with full jitter, at most ``cap``."""
    ceiling = max(1, min(cap, OUTAGE_RETRY_CAP_SECONDS, 2 ** min(retries + 1, 6)))
    return random.randint(1, ceiling)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
