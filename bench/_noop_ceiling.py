"""Ceiling (a): a no-op Celery task's throughput on the same broker with the same worker settings.

Starts ``python -m bench.noop_app worker`` processes (``dustpan worker`` itself, with the
``bench.noop`` task registered: same celeryconfig, same options, same pool) in the same
number and concurrency as the fleet's workers, publishes N tasks from several producer
threads through the same Celery app, and times from the first publish until the last task
counted itself in Redis.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench._measure import BenchError, CpuRoles, PeakRss, wait_ready
from tests.support.fleet import DustpanProcess


class NoopWorker(DustpanProcess):
    """``python -m bench.noop_app <args>``: workers.cli with the no-op task registered."""

    module = "bench.noop_app"


@dataclass
class NoopCeiling:
    tasks: int
    producers: int
    workers: int
    concurrency: int
    published_seconds: float
    ran_seconds: float
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.ran_seconds


def _noop_task(env: dict[str, str]) -> Any:
    """The task object, bound to the fleet's broker: this process takes the fleet's settings first."""
    os.environ.update({key: value for key, value in env.items() if key.startswith("DUSTPAN_")})
    from workers.settings import get_settings

    get_settings.cache_clear()
    from bench.noop_app import noop

    if noop.app.conf.broker_url != env["DUSTPAN_BROKER_URL"]:
        raise BenchError(f"the no-op publisher would use {noop.app.conf.broker_url}, not the fleet's broker")
    return noop


def run_noop_ceiling(
    env: dict[str, str],
    log_dir: Path,
    server_pids: dict[str, int],
    tasks: int,
    producers: int,
    workers: int,
    concurrency: int,
    timeout: float,
) -> NoopCeiling:
    from bench.noop_app import NOOP_QUEUE, RAN_KEY

    noop = _noop_task(env)
    processes: list[DustpanProcess] = []
    broker = redis.Redis.from_url(env["DUSTPAN_BROKER_URL"])
    try:
        start_noop_workers(processes, env, log_dir, workers, concurrency)
        _publish_and_count(noop, NOOP_QUEUE, broker, RAN_KEY, 20 * workers * concurrency, producers, timeout)
        roles = {"noop workers": [p.pid for p in processes], "bench publishers": [os.getpid()]}
        roles.update({name: [pid] for name, pid in server_pids.items() if name == "redis" and pid})
        cpu = CpuRoles(roles)
        with PeakRss(None, [p.pid for p in processes]) as rss:
            before = cpu.snapshot()
            published, ran = _publish_and_count(noop, NOOP_QUEUE, broker, RAN_KEY, tasks, producers, timeout)
            after = cpu.snapshot()
        return NoopCeiling(
            tasks,
            producers,
            workers,
            concurrency,
            published,
            ran,
            {role: after[role] - before[role] for role in before},
            {"worker main": rss.peaks["worker main"], "pool child": rss.peaks["pool child"]},
        )
    finally:
        for process in processes:
            process.stop()
        broker.close()


def start_noop_workers(
    processes: list[DustpanProcess], env: dict[str, str], log_dir: Path, workers: int, concurrency: int
) -> None:
    """Start ``workers`` no-op workers into ``processes`` (the caller stops them) and wait until ready."""
    from bench.noop_app import NOOP_QUEUE

    for n in range(1, workers + 1):
        name = f"noop{n}-{os.getpid()}@%h"
        args = ["worker", "--queues", NOOP_QUEUE, "--concurrency", str(concurrency), "--name", name]
        processes.append(NoopWorker(f"noop{n}", args, env, log_dir).start())
    for process in processes:
        wait_ready(process)


def _publish_and_count(
    noop: Any, queue: str, broker: redis.Redis, key: str, tasks: int, producers: int, timeout: float
) -> tuple[float, float]:
    """Seconds from the first publish to the last publish, and to the last task run."""
    broker.delete(key)
    failures: list[BaseException] = []
    published_at = [0.0] * producers

    def publish(n: int) -> None:
        try:
            for _ in range(n, tasks, producers):
                noop.apply_async(queue=queue)
            published_at[n] = time.perf_counter()
        except BaseException as exc:  # reported by the polling thread
            failures.append(exc)

    threads = [threading.Thread(target=publish, args=(n,), name=f"noop-producer-{n}") for n in range(producers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    deadline = start + timeout
    ran = 0
    while ran < tasks:
        if failures:
            raise BenchError(f"publishing no-op tasks failed: {failures[0]!r}")
        if time.perf_counter() > deadline:
            raise BenchError(f"only {ran} of {tasks} no-op tasks ran before the timeout")
        time.sleep(0.005)
        ran = int(broker.get(key) or 0)
    done = time.perf_counter()
    for thread in threads:
        thread.join()
    return max(published_at) - start, done - start
