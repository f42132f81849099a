"""SIGKILLs for the fleet benches: which process is which pool, a kill schedule, and the
recovery figures (how long after a SIGKILL the work the dead process held is done).

A ``dustpan worker`` with no ``--queues`` is a prefork node (the main process and its pool
children) plus its execution node, a threads node it runs as a child and restarts.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable

import httpx
import psutil

from bench._fleet_bench import WEBHOOK_SECRET, FleetBench
from bench._measure import BenchError, Books
from tests.support.alpaca_stub import AlpacaStub
from tests.support.chaos import restart
from tests.support.feed import post_trades, trade_json
from tests.support.fleet import DustpanProcess, Fleet, wait_for
from workers import worker_pools

KILL_CYCLE = ("whole worker", "execution node", "prefork pool child", "execution node")
IN_FLIGHT_OR_WAITING = (
    "SELECT (SELECT count(*) FROM trades WHERE status = 'received')"
    " + (SELECT count(*) FROM executions WHERE status IN ('pending', 'submitted'))"
)


def execution_node(worker: DustpanProcess) -> psutil.Process | None:
    return worker_pools.execution_node(worker.children())


def pool_children(worker: DustpanProcess) -> list[psutil.Process]:
    """The prefork node's pool processes: the worker's direct children but its execution node."""
    try:
        children = psutil.Process(worker.pid).children()
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if worker_pools.IO_QUEUES not in p.cmdline()]


def sigkill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)


class Killer:
    """SIGKILLs one fleet process every ``every`` s (the first after a quarter of it), cycling
    through ``KILL_CYCLE`` and the workers; a whole worker is started again at once."""

    def __init__(self, fleet: Fleet, every: float, start: int) -> None:
        self.fleet, self.every, self.next = fleet, every, start
        self.done: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)
        self._restarting: dict[str, threading.Thread] = {}  # by worker name

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(120)
        for restarting in self._restarting.values():
            restarting.join(120)
        if self.error is not None:
            raise BenchError(f"the killer failed: {self.error!r}")

    def _run(self) -> None:
        deadline = time.monotonic() + self.every / 4
        try:
            while not self._stop.wait(max(0.0, deadline - time.monotonic())):
                workers = self.fleet.workers
                self.kill(KILL_CYCLE[self.next % len(KILL_CYCLE)], workers[self.next % len(workers)])
                self.next += 1
                deadline += self.every
        except BaseException as exc:  # reported on exit
            self.error = exc

    def kill(self, kind: str, worker: DustpanProcess) -> None:
        if worker.name in self._restarting:  # killed before: wait until it is back
            self._restarting.pop(worker.name).join(120)
        if kind == "whole worker":
            worker.kill()
            # At once, as compose (restart: always) or systemd would; the schedule goes on meanwhile.
            self._restarting[worker.name] = threading.Thread(target=self._restart, args=(worker,), daemon=True)
            self._restarting[worker.name].start()
        elif kind == "execution node":
            node = execution_node(worker)
            sigkill([node] if node else [])
        else:
            sigkill(pool_children(worker)[:1])
        self.done.append(f"{worker.name} {kind}")

    def _restart(self, worker: DustpanProcess) -> None:
        try:
            restart(worker)
        except BaseException as exc:  # reported on exit
            self.error = exc


def wait_drained(books: Books, timeout: float, what: str) -> None:
    """Until no trade waits and no execution is in flight: the database says nothing is left to do."""
    wait_for(lambda: books.value(IN_FLIGHT_OR_WAITING) == 0, timeout, what, interval=0.1)


# -- recovery after a SIGKILL of each pool -------------------------------------------------------


def recover_execution_node(bench: FleetBench, stub: AlpacaStub, n: int, timeout: float) -> str:
    """Kill the execution node whose order call the stub holds open; seconds until the order is recorded."""
    books, symbol = bench.books, f"RECX{n}"
    stub.hold([symbol])
    try:
        send_one(bench.fleet, f"{symbol}-1", symbol)
        wait_for(lambda: stub.held_posts[symbol] >= 1, 30, f"{symbol}'s order POST to be held")
        claimed_by = str(books.value("SELECT claimed_by FROM executions WHERE symbol = %s", (symbol,)))
        victim = psutil.Process(int(claimed_by.split()[0].rsplit(":", 1)[1]))  # "<node>:<pid> <nonce>"
        sigkill([victim])
        killed = time.perf_counter()
        wait_for(lambda: books.value(IN_FLIGHT_OR_WAITING) == 0, timeout, "the held order to be recorded", 0.02)
        return f"{time.perf_counter() - killed:.2f} s"
    finally:
        stub.release_held()


def recover_prefork(bench: FleetBench, n: int, kind: str, timeout: float) -> str:
    """Stop a worker's pool children (its main process goes on taking messages and hands them to
    them), send one-trade webhooks on fresh symbols, SIGKILL the children or the whole worker;
    seconds until every trade is accumulated, and how many waited on the killed processes."""
    fleet, books = bench.fleet, bench.books
    worker = fleet.workers[n % len(fleet.workers)]
    stopped = pool_children(worker)
    for process in stopped:
        process.send_signal(signal.SIGSTOP)
    symbols = [f"REC{kind[0].upper()}{n}-{k}" for k in range(8)]
    for symbol in symbols:
        send_one(fleet, f"{symbol}-1", symbol)
    left = "SELECT count(*) FROM trades WHERE status = 'received' AND symbol = ANY(%s)"
    waiting = steady_count(lambda: int(books.value(left, (symbols,))))  # what is left waits on the stopped ones
    if kind == "whole worker":
        worker.kill()  # SIGKILL reaches stopped processes too
    else:
        sigkill(stopped)
    killed = time.perf_counter()
    wait_for(lambda: books.value(left, (symbols,)) == 0, timeout, "the trades that waited to be accumulated", 0.02)
    took = time.perf_counter() - killed
    wait_drained(books, timeout, "their orders to be recorded")
    if kind == "whole worker":
        restart(worker)
    return f"{took:.2f} s ({waiting} of {len(symbols)} trades waiting at the kill)"


def steady_count(count: Callable[[], int], quiet: float = 1.5, most: float = 15) -> int:
    """``count()`` once it stopped changing for ``quiet`` s (the live workers took what they could)."""
    last, changed, deadline = count(), time.monotonic(), time.monotonic() + most
    while time.monotonic() - changed < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, changed = now, time.monotonic()
    return last


def send_one(fleet: Fleet, trade_id: str, symbol: str) -> None:
    with httpx.Client(base_url=fleet.api_url, timeout=30) as client:
        answer = post_trades(client, WEBHOOK_SECRET, [trade_json(trade_id, symbol, "1", "100.00")])
    if answer["accepted"] != 1:
        raise BenchError(f"webhook refused: {answer}")
