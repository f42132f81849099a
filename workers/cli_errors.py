"""The CLI's error boundary: every failure is one line and an exit status (SPEC section 2).

0 success, 1 an audit imbalance or a failed operation, 2 bad usage or a bad setting, 3 a
service (database, Celery broker, brokerage) unreachable. ``--verbose`` adds the traceback.
Commands first check the services they need (:func:`require`), so an outage is named before
any work starts; the boundary also reads an outage out of an exception raised later.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from workers.settings import SettingsError

FAILED, USAGE, UNREACHABLE = 1, 2, 3
CONNECT_TIMEOUT_SECONDS = 5


class UsageError(Exception):
    """Bad usage or a missing setting: exit 2."""


class ServiceUnreachable(Exception):
    """A dependency did not answer: exit 3, naming it and its URL without credentials."""

    def __init__(self, service: str, url: str | None, reason: str) -> None:
        self.service, self.url, self.reason = service, url, reason
        where = f" at {without_credentials(url)}" if url else ""
        super().__init__(f"{service} unreachable{where} ({reason}); start it or fix the URL")


def without_credentials(url: str) -> str:
    """The URL with any user and password removed, so a log or a terminal never shows them."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


@contextmanager
def boundary(verbose: bool) -> Iterator[None]:
    """Turn whatever a command raises into one line on stderr and its exit status."""
    try:
        yield
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a message from deep inside: a missing setting
            _fail(USAGE, exc.code.removeprefix("dustpan: "), verbose)
        raise
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        status, line = classify(exc)
        _fail(status, line, verbose)


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit status and the line for an exception, looking through its causes."""
    for link in _chain(exc):
        if isinstance(link, ServiceUnreachable):
            return UNREACHABLE, str(link)
        if isinstance(link, (UsageError, SettingsError)):
            return USAGE, str(link)
        outage = _outage(link)
        if outage is not None:
            return UNREACHABLE, str(outage)
    return FAILED, f"failed: {type(exc).__name__}: {_first_line(exc)}"


def _outage(exc: BaseException) -> ServiceUnreachable | None:
    import redis
    import sqlalchemy.exc
    from kombu.exceptions import OperationalError as KombuOperationalError

    from tasks.ports import RateLimited, TemporaryError
    from workers.settings import get_settings

    settings = get_settings()
    if isinstance(exc, sqlalchemy.exc.OperationalError) and not _is_conflict(exc):
        return ServiceUnreachable("database", settings.database_url, _first_line(exc.orig or exc))
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, KombuOperationalError)):
        return ServiceUnreachable("Celery broker", settings.broker_url, _first_line(exc))
    if isinstance(exc, TemporaryError) and not isinstance(exc, RateLimited):
        return ServiceUnreachable("brokerage", _brokerage_url(), _first_line(exc))
    return None


def _is_conflict(exc: BaseException) -> bool:
    """A deadlock or serialization failure is an OperationalError too, but the server answered."""
    import psycopg2.errors

    orig = getattr(exc, "orig", None)
    return isinstance(orig, (psycopg2.errors.TransactionRollbackError, psycopg2.errors.QueryCanceled))


def _brokerage_url() -> str | None:
    from workers.settings import get_settings

    settings = get_settings()
    return settings.alpaca_trading_url if settings.brokerage == "alpaca" else settings.database_url


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def _fail(status: int, line: str, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    hint = "" if verbose else " (--verbose shows the traceback)" if status == FAILED else ""
    print(f"dustpan: {line}{hint}", file=sys.stderr)
    raise SystemExit(status) from None


# --- pre-flight checks ----------------------------------------------------------------------


def require(services: tuple[str, ...], wait_seconds: int = 0) -> None:
    """Check that each named service answers, before the command does any work; a role
    (worker, Beat, Flower) waits up to ``wait_seconds`` for them, as a restart takes seconds."""
    checks = {"database": check_database, "broker": check_broker, "brokerage": check_brokerage}
    deadline = time.monotonic() + wait_seconds
    for service in services:
        while True:
            try:
                checks[service]()
                break
            except ServiceUnreachable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1)


def check_database() -> None:
    import psycopg2

    from workers.settings import get_settings

    url = get_settings().database_url
    if not url:
        raise UsageError("DUSTPAN_DATABASE_URL is not set (dustpan up starts an embedded database)")
    try:
        psycopg2.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
    except psycopg2.OperationalError as exc:
        raise ServiceUnreachable("database", url, _first_line(exc)) from exc


def check_broker() -> None:
    import redis

    from workers.settings import get_settings

    url = get_settings().broker_url
    if not url:
        raise UsageError("DUSTPAN_BROKER_URL is not set (dustpan up starts an embedded Redis)")
    client = redis.Redis.from_url(
        url, socket_timeout=CONNECT_TIMEOUT_SECONDS, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise ServiceUnreachable("Celery broker", url, _first_line(exc)) from exc
    finally:
        client.close()


def check_brokerage() -> None:
    from tasks.ports import TemporaryError
    from workers import runtime

    for account in runtime.settings().accounts:
        try:
            runtime.brokerage(account).ping()
        except TemporaryError as exc:
            raise ServiceUnreachable(f"brokerage of account {account}", _brokerage_url(), _first_line(exc)) from exc
