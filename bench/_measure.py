"""What the fleet benches measure besides their own figure: CPU per role, peak RSS, the machine."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import psycopg2.errors
import redis

from tests.support.fleet import DustpanProcess, Fleet, wait_for

MB = 1024 * 1024


class BenchError(Exception):
    """Something broke: the run's figures would mean nothing."""


def percentile(values: Iterable[float], percent: int) -> float:
    """Nearest rank; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-percent * len(ordered) // 100))
    return ordered[rank - 1]


class Books:
    """One autocommit connection for setup and polling.

    Autocommit, so that between statements the bench holds no snapshot and no lock (TRUNCATE
    and the workers never wait for it); one connection, so that polling does not fork a
    PostgreSQL backend 20 times a second and bill it to the server.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg2.connect(self.url)
            self._connection.autocommit = True
        with self._connection.cursor() as cursor:
            cursor.execute(query, params)
            return list(cursor.fetchall()) if cursor.description else []

    def value(self, query: str, params: Any = None) -> Any:
        rows = self.rows(query, params)
        return rows[0][0] if rows else None

    def accumulated(self) -> int:
        return int(self.value("SELECT count(*) FROM trades WHERE status = 'accumulated'"))

    def truncate_all(self) -> None:
        tables = self.value(
            "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        if not tables:
            return
        # Give way rather than queue: a worker's sweep holds a read of job_runs open while its
        # second connection reads other tables, and those reads would queue behind a waiting
        # TRUNCATE: nobody moves again, and PostgreSQL cannot see that cycle (it runs through the
        # worker). A TRUNCATE that gives up after a second lets the sweep finish; then it tries again.
        self.rows("SET lock_timeout = '1s'")
        try:
            for attempt in range(60):
                try:
                    self.rows(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
                    return
                except psycopg2.errors.LockNotAvailable:
                    time.sleep(0.1 * attempt)
            raise BenchError("TRUNCATE waited for locks for minutes: a transaction on the bench's tables stays open")
        finally:
            self.rows("RESET lock_timeout")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def settle(books: Books, broker_url: str, queues: Iterable[str], timeout: float = 60) -> None:
    """Let earlier tasks (executions on their way to the broker) finish, so TRUNCATE pulls no rows from under one."""
    broker = redis.Redis.from_url(broker_url)
    names = list(queues)

    def idle() -> bool:
        queued = sum(int(broker.llen(queue)) for queue in names)
        unacked = int(broker.hlen("unacked"))  # kombu's Redis transport: delivered, not yet acked
        in_flight = books.value("SELECT count(*) FROM executions WHERE status IN ('pending', 'submitted')")
        return queued + unacked + int(in_flight) == 0

    try:
        wait_for(idle, timeout, "the previous run's tasks to finish", interval=0.2)
    except AssertionError as exc:
        print(f"note: {exc}; going on", file=sys.stderr)
    finally:
        broker.close()


# -- CPU per role ---------------------------------------------------------------------------


class CpuRoles:
    """CPU seconds (user + system) per role, each role a set of process trees.

    A process's own time plus the time of children it has reaped (PostgreSQL backends
    that exited, replaced pool processes), plus its live descendants: a difference of two
    snapshots is the CPU the role burnt in between, wherever it ran.
    """

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self.roles = roles

    def snapshot(self) -> dict[str, float]:
        return {role: sum(_tree_cpu(pid) for pid in pids) for role, pids in self.roles.items()}


def _tree_cpu(pid: int) -> float:
    if pid == os.getpid():  # the clients and the poller; children here are the fleet, counted apart
        times = os.times()
        return times.user + times.system
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for member in members:
        try:
            t = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def fleet_roles(fleet: Fleet, server_pids: dict[str, int]) -> dict[str, list[int]]:
    roles = {"api": [fleet.api.pid] if fleet.api else [], "workers": [w.pid for w in fleet.workers]}
    roles.update({name: [pid] for name, pid in server_pids.items() if pid})
    roles["bench clients"] = [os.getpid()]
    return roles


# -- peak RSS -------------------------------------------------------------------------------


class PeakRss:
    """Largest resident set (MB) seen per kind of process, sampled in a thread every 0.2 s.

    Kinds: "api", "worker main" (each Celery main process) and "pool child" (each prefork
    child, including replacements). RSS counts pages a child shares with its parent after the
    fork, so children's figures are not additive.
    """

    def __init__(self, api_pid: int | None, worker_pids: list[int], interval: float = 0.2) -> None:
        self.api_pid, self.worker_pids, self.interval = api_pid, worker_pids, interval
        self.peaks: dict[str, float] = {"api": 0.0, "worker main": 0.0, "pool child": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        if self.api_pid is not None:
            self._note("api", _rss([self.api_pid]))
        for pid in self.worker_pids:
            self._note("worker main", _rss([pid]))
            try:
                children = [child.pid for child in psutil.Process(pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            self._note("pool child", _rss(children))

    def _note(self, kind: str, sizes: list[int]) -> None:
        if sizes:
            self.peaks[kind] = max(self.peaks[kind], max(sizes) / MB)


def _rss(pids: list[int]) -> list[int]:
    sizes = []
    for pid in pids:
        try:
            sizes.append(psutil.Process(pid).memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return sizes


# -- the machine ----------------------------------------------------------------------------


def machine(books: Books, broker_url: str, durability: str) -> list[tuple[str, str]]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    broker = redis.Redis.from_url(broker_url)
    try:
        redis_version = str(broker.info("server").get("redis_version", "?"))
    finally:
        broker.close()
    return [
        ("code", code_version()),
        ("nproc", f"{len(os.sched_getaffinity(0))} ({cpu})"),
        ("load average", " ".join(f"{load:.2f}" for load in os.getloadavg()) + " (other work on the machine)"),
        ("python", f"{platform.python_version()} ({platform.platform()})"),
        ("postgresql", str(books.value("SELECT version()")).split(" on ")[0]),
        ("postgresql durability", durability),
        ("redis", redis_version),
    ]


def code_version() -> str:
    """The commit measured, and the product files that differ from it (figures are for that code)."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", *PRODUCT_PATHS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "? (not a git checkout)"
    paths = [line[3:] for line in changed if line.strip()]
    return f"{head}" + (f" with uncommitted changes in {', '.join(paths)}" if paths else "")


PRODUCT_PATHS = ("workers", "tasks", "models", "migrations", "celeryconfig.py")


def note_code_change(started_with: str) -> None:
    now = code_version()
    if now != started_with:
        print(f"note: the product code changed during the run (started on {started_with}, now {now})")


# Celery's own INFO line for every task run (celery.app.trace.LOG_SUCCESS).
TASK_SUCCEEDED = re.compile(r"Task ([\w.]+)\[[^\]]+\] succeeded in ([0-9.e+-]+)s")


def log_offsets_of(fleet: Fleet) -> dict[Path, int]:
    return {w.log_path: w.log_path.stat().st_size if w.log_path.exists() else 0 for w in fleet.workers}


def task_run_seconds(fleet: Fleet, offsets: dict[Path, int]) -> dict[str, list[float]]:
    """Run time of every task that succeeded since ``offsets``, by task name, from the workers' logs."""
    runs: dict[str, list[float]] = {}
    for path, offset in offsets.items():
        with path.open("rb") as log:
            log.seek(offset)
            for name, seconds in TASK_SUCCEEDED.findall(log.read().decode(errors="replace")):
                runs.setdefault(name, []).append(float(seconds))
    return runs


def print_log_tails(processes: Iterable[DustpanProcess | None]) -> None:
    for process in processes:
        if process is not None:
            print(f"--- {process.name} log (tail) ---\n{process.log_tail(20)}", file=sys.stderr)


def wait_ready(process: DustpanProcess, timeout: float = 60) -> None:
    """Until the Celery worker logged that it is ready."""

    def ready() -> bool:
        return process.log_path.exists() and "ready" in process.log_path.read_text(errors="replace")

    wait_for(ready, timeout, f"{process.name} to be ready\n{process.log_tail()}")
