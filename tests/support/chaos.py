"""The chaos harness: a webhook feed that never gives up, and a fault injector that kills things.

The feed sends every trade until it is answered 202, re-delivers a share of them later, in
other batches and in shuffled order, and keeps a count of what it had to retry. The injector
SIGKILLs pool children and whole workers, restarts Redis (SIGKILL, AOF replay) and restarts
PostgreSQL with ``-m immediate``, and a supervisor restarts any fleet process that died, as
compose or ``dustpan up`` would.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import psutil

from tests.support.feed import make_trades, post_trades
from tests.support.fleet import DustpanProcess, Fleet, wait_for
from workers.embedded import EmbeddedPostgres, EmbeddedRedis
from workers.worker_pools import execution_node

FAULT_KINDS = (
    "worker child SIGKILL",
    "execution pool SIGKILL",  # the threads node, whose calls the stub often holds (stall_seconds)
    "worker SIGKILL",
    "redis restart",
    "postgres restart -m immediate",
)


@dataclass(frozen=True)
class ChaosPlan:
    trades: int
    symbols: int
    redelivery_percent: int
    clients: int
    max_batch: int
    fault_every: tuple[float, float]  # float-ok: seconds between faults, drawn uniformly
    seed: int
    # float-ok: seconds each client waits between its batches, so that the feed (and the
    # faults injected while it lasts) spans that long however fast the fleet takes it.
    pause_seconds: float = 0.0


def chaos_feed(plan: ChaosPlan) -> tuple[list[dict[str, str]], list[list[dict[str, str]]]]:
    """Every trade once, then a share again, shuffled together into batches of 1..max_batch.

    Symbol 0 is hot: it gets half the trades. Arrival order is random, so a symbol's trades
    arrive out of ``executed_at`` order, and a re-delivery may even come before the original.
    """
    rng = random.Random(plan.seed)
    hot = plan.trades // 2
    counts = [hot] + [(plan.trades - hot) // (plan.symbols - 1)] * (plan.symbols - 1)
    counts[0] += plan.trades - sum(counts)
    trades = [t for n, count in enumerate(counts) for t in make_trades(f"CH{n:02d}", count, rng)]
    again = [dict(t) for t in trades if rng.randrange(100) < plan.redelivery_percent]
    deliveries = trades + again
    rng.shuffle(deliveries)
    batches, start = [], 0
    while start < len(deliveries):
        size = rng.randint(1, plan.max_batch)
        batches.append(deliveries[start : start + size])
        start += size
    return trades, batches


class Feed:
    """Client threads posting the batches; each batch is retried until it is answered 202."""

    def __init__(
        self,
        api_url: str,
        secret: str,
        batches: list[list[dict[str, str]]],
        clients: int,
        pause_seconds: float = 0.0,  # float-ok: seconds
    ) -> None:
        self.api_url, self.secret, self.pause_seconds = api_url, secret, pause_seconds
        self.shares = [batches[n::clients] for n in range(clients)]
        self.counts: Counter[str] = Counter()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(share,), daemon=True) for share in self.shares]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float) -> None:  # float-ok: seconds
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0, deadline - time.monotonic()))
        if self.errors:
            raise AssertionError(f"the feed failed: {self.errors[0]!r}")
        assert not self.running(), "the feed did not finish in time"

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def _run(self, share: list[list[dict[str, str]]]) -> None:
        try:
            with httpx.Client(base_url=self.api_url, timeout=30) as client:
                for batch in share:
                    self._deliver(client, batch)
                    time.sleep(self.pause_seconds)
        except BaseException as exc:  # reported by join()
            self.errors.append(exc)

    def _deliver(self, client: httpx.Client, batch: list[dict[str, str]]) -> None:
        while True:
            try:
                answer = post_trades(client, self.secret, batch)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code < 500:
                    raise  # the feed is valid: a 4xx is a bug
                self._count(f"webhook answered {exc.response.status_code}, retried")
            except httpx.TransportError as exc:
                self._count(f"webhook {type(exc).__name__}, retried")
            else:
                self._count("webhook requests answered 202")
                self._count("trades accepted", int(answer["accepted"]))  # type: ignore[call-overload]
                self._count("trades reported duplicate", int(answer["duplicates"]))  # type: ignore[call-overload]
                return
            time.sleep(0.2)


class FaultInjector:
    """Injects one fault at a time, cycling through the kinds in shuffled rounds."""

    def __init__(
        self,
        fleet: Fleet,
        postgres: EmbeddedPostgres,
        redis: EmbeddedRedis,
        plan: ChaosPlan,
        extra: list[str],
        supervised: bool = True,
    ) -> None:
        self.fleet, self.postgres, self.redis, self.plan = fleet, postgres, redis, plan
        # Unsupervised, a role that exits by itself stays dead, as under a plain process manager.
        self.supervised = supervised
        self.exited: dict[str, str] = {}  # role -> the tail of its log, when unsupervised
        self.rng = random.Random(plan.seed + 1)
        self.counts: Counter[str] = Counter()
        self.extra = extra  # further fault kinds the caller injects through on_fault
        self.on_fault: Callable[[str], object] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._round: list[str] = []
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(300)
        if self.error is not None:
            raise AssertionError(f"the fault injector failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            # After stop() the round in progress is finished, so every kind has fired at least
            # once however fast the feed was.
            while not (self._stop.wait(self.rng.uniform(*self.plan.fault_every)) and self._every_kind_fired()):
                self.inject(self._next_kind())
                self.supervise()
        except BaseException as exc:
            self.error = exc

    def _every_kind_fired(self) -> bool:
        return all(self.counts[kind] >= 1 for kind in (*FAULT_KINDS, *self.extra))

    def _next_kind(self) -> str:
        if not self._round:
            self._round = [*FAULT_KINDS, *self.extra]
            self.rng.shuffle(self._round)
        return self._round.pop()

    def inject(self, kind: str) -> None:
        if kind == "worker child SIGKILL":
            worker = self.rng.choice(self.fleet.workers)
            victims = worker.children()
            if victims:
                self.rng.choice(victims).kill()
                self.counts[kind] += 1
        elif kind == "execution pool SIGKILL":  # its worker's keeper starts it again
            worker = self.rng.choice(self.fleet.workers)
            node = execution_node(worker.children())
            if node is not None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    node.kill()
                    self.counts[kind] += 1
        elif kind == "worker SIGKILL":
            worker = self.rng.choice(self.fleet.workers)
            worker.kill()
            self.counts[kind] += 1
            time.sleep(self.rng.uniform(0.2, 2))
            restart(worker)
        elif kind == "redis restart":
            self.redis.kill()
            time.sleep(self.rng.uniform(0.2, 2))
            self.redis.start()
            self.counts[kind] += 1
        elif kind == "postgres restart -m immediate":
            self.postgres.restart(immediate=True)
            self.counts[kind] += 1
        elif self.on_fault is not None:
            self.on_fault(kind)
            self.counts[kind] += 1

    def supervise(self) -> None:
        """Restart whatever died by itself, as compose would; unsupervised, only note it."""
        for process in [*self.fleet.workers, *self.fleet.beats, self.fleet.api]:
            if process is None or process.process is None or process.process.poll() is None:
                continue
            if not self.supervised:
                if process.name not in self.exited:
                    self.counts[f"{process.name} exited by itself, not restarted"] += 1
                    self.exited[process.name] = process.log_tail()
                continue
            self.counts[f"{process.name} exited by itself, restarted"] += 1
            restart(process)


def restart(process: DustpanProcess) -> None:
    """Start a dead process again, appending to its log, and wait for a worker to be ready."""
    offset = process.log_path.stat().st_size if process.log_path.exists() else 0
    process.start()
    if process.args[0] == "worker":

        def ready() -> bool:
            with process.log_path.open("rb") as log:
                log.seek(offset)
                return b"ready" in log.read()

        wait_for(ready, 60, f"{process.name} to be ready again")
