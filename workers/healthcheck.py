"""Container healthchecks, one per role (docker-compose.yml): exit 0 healthy, 1 not, one line.

    python -m workers.healthcheck http URL        the API's /health/live, Flower's /healthcheck
    python -m workers.healthcheck worker NODE     this worker node answers a Celery ping
    python -m workers.healthcheck beat            a Beat holds the schedule lock (renewed every loop)

Each checks only its own process, never a dependency: a Redis outage makes every role
unhealthy at once anyway, and restarting them would not bring Redis back.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

TIMEOUT_SECONDS = 5


def check_http(url: str) -> str | None:
    import httpx

    try:
        response = httpx.get(url, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return f"{url}: {type(exc).__name__}"
    return None if response.is_success else f"{url}: HTTP {response.status_code}"


def check_worker(node: str) -> str | None:
    from workers.celery_app import app

    node = node.replace("%h", socket.gethostname())  # as `celery worker -n` expands it
    replies = app.control.ping(destination=[node], timeout=TIMEOUT_SECONDS)
    return None if any(node in reply for reply in replies) else f"worker {node} did not answer a ping"


def check_beat() -> str | None:
    import redis

    import celeryconfig

    key = f"{celeryconfig.redbeat_key_prefix}:lock"
    client = redis.Redis.from_url(str(celeryconfig.broker_url), socket_timeout=TIMEOUT_SECONDS)
    # The leader renews the lock every loop and it expires after redbeat_lock_timeout: a Beat
    # that hangs or dies lets it lapse.
    return None if client.exists(key) else f"no Beat holds the schedule lock {key}"


def main(argv: list[str]) -> int:
    checks: dict[str, Callable[..., str | None]] = {"http": check_http, "worker": check_worker, "beat": check_beat}
    if not argv or argv[0] not in checks:
        print("usage: python -m workers.healthcheck http URL | worker NODE | beat", file=sys.stderr)
        return 2
    try:
        problem = checks[argv[0]](*argv[1:])
    except Exception as exc:  # a healthcheck answers, it never raises
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
