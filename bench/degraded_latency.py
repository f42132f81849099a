"""Latency of healthy symbols while others hang at the brokerage and workers are SIGKILLed (SPEC 6).

    python bench/degraded_latency.py [--rate 200] [--seconds 20] [--symbols 24] [--hang-percent 15]
        [--error-percent 5] [--kill-every 10] [--runs healthy,faults,kills,both] [--recoveries 2]
        [--slowest N] [--keep-logs DIR]
        [--workers W] [--concurrency K] [--database-url URL --broker-url URL]

The real API and ``--workers`` default ``dustpan worker`` processes (no ``--queues``: a prefork
node on ingestion,ops and a threads node on execution each), ``DUSTPAN_BROKERAGE=alpaca`` against
``tests/support/alpaca_stub`` served from this process. The feed is the one of
``webhook_to_broker_latency.py``: ``--rate`` one-trade webhooks/s open loop for ``--seconds``,
round robin over ``--symbols`` symbols, each trade buying 1 whole share. Runs, one after another
on a truncated database:

- healthy: no faults;
- faults: ``--hang-percent`` of the symbols hang at the brokerage (their order POSTs are accepted,
  the answers held until the feed ends, so the client times out and looks the order up), and
  ``--error-percent`` of all order POSTs and lookups are answered HTTP 500;
- kills: a SIGKILL every ``--kill-every`` s, in turn a whole worker (its prefork node, pool
  children and execution node; the bench starts it again at once, as a process manager would),
  the execution node of a worker (its ``dustpan worker`` starts it again), a prefork pool child
  (Celery replaces it), the execution node again;
- both: the faults and the kills together.

For the healthy symbols only (the same ones in every run), it prints p50/p90/p99/max and count of
trade received -> accumulated, from the database (``trades.received_at``, stamped when the
webhook's transaction starts, to ``accumulated_at``, stamped when the accumulate run that took it
starts), and of webhook 202 -> order at the broker (the stub's arrival time of the POST it
accepted, per order, minus the latest 202 of its trades, mapped through the database as
``webhook_to_broker_latency.py`` does), next to the SPEC 6 targets (healthy / faulted). Then
the recovery after a SIGKILL of each pool (``--recoveries`` times each): the execution node
killed while the stub holds its order call open, until another claimant records the order; a
whole worker, and a worker's prefork pool children, killed while trades wait on them (the pool
children are stopped with SIGSTOP first, so that the accumulate messages the worker takes wait
there), until those trades are accumulated.

To see what the slowest orders waited on: ``--slowest N`` lists each run's N slowest healthy
orders with their execution ids and what their rows say (created -> submitted, claims, attempts),
and ``--keep-logs DIR`` keeps the fleet's logs, where those ids can be looked up.

Prints figures; never asserts on time. Exits non-zero only if something broke: a webhook
refused, books not drained, an accepted order sent again, the broker and the books disagreeing
on any order, a symbol whose filled shares differ from the trades sent, or ``/audit`` not ok.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support lives next to bench/

import httpx

from bench._fleet_bench import (
    API_TOKEN,
    WEBHOOK_SECRET,
    FleetBench,
    add_fleet_options,
    require_positive,
    run_fleet_bench,
)
from bench._measure import BenchError, Books, machine, percentile
from bench._sigkill import Killer, recover_execution_node, recover_prefork, wait_drained
from bench._webhook_client import post_open_loop
from bench.webhook_to_broker_latency import (
    Order,
    TimedAlpacaStub,
    alpaca_env,
    orders_from_books,
    paced_trades,
    warm_up,
)
from tests.support.fleet import Fleet

RUNS = {"healthy": (False, False), "faults": (True, False), "kills": (False, True), "both": (True, True)}
# SPEC 6: p99 in ms, healthy / with the faults.
TARGETS_MS = {"received -> accumulated": (250, 1000), "webhook 202 -> order at the broker": (100, 500)}


def sick_symbols(symbols: int, percent: int) -> list[str]:
    """The last ``percent`` of ``paced_trades``' symbols (rounded, at least one unless 0%)."""
    count = min(symbols, max(1, round(symbols * percent / 100))) if percent else 0
    return [f"LAT{n:02d}" for n in range(symbols - count, symbols)]


@contextlib.contextmanager
def brokerage_faults(stub: TimedAlpacaStub, sick: list[str], error_percent: int) -> Iterator[None]:
    stub.hold(sick)
    stub.order_fault_percent = stub.lookup_fault_percent = {"500": error_percent} if error_percent else {}
    try:
        yield
    finally:
        stub.order_fault_percent = stub.lookup_fault_percent = {}
        stub.release_held()


@dataclass
class RunFigures:
    name: str
    faulted: bool
    accumulated_s: list[float]  # healthy symbols' trades, received -> accumulated
    order_s: list[float]  # healthy symbols' orders, 202 -> order at the broker
    notes: list[str]
    kills: int  # SIGKILLs sent during the feed

    def latencies_ms(self) -> dict[str, list[float]]:
        """By ``TARGETS_MS`` label."""
        both = (self.accumulated_s, self.order_s)
        return {label: [v * 1000 for v in values] for label, values in zip(TARGETS_MS, both, strict=True)}


def run_once(bench: FleetBench, stub: TimedAlpacaStub, args: argparse.Namespace, name: str, kills: int) -> RunFigures:
    fleet, books = bench.fleet, bench.books
    with_faults, with_kills = RUNS[name]
    sick = sick_symbols(args.symbols, args.hang_percent)
    wait_drained(books, args.timeout, "the previous run to drain")
    books.truncate_all()
    requests = paced_trades(args.rate, args.seconds, args.symbols, f"DL-{name}-{int(time.time())}")
    known_orders, faults_before = set(stub.orders), Counter(stub.faults_injected)
    print(f"\n== {name}: load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    clock = time.time() - time.perf_counter()
    killer = Killer(fleet, args.kill_every, kills)
    with contextlib.ExitStack() as faults:
        if with_faults:
            faults.enter_context(brokerage_faults(stub, sick, args.error_percent))
        if with_kills:
            faults.enter_context(killer)
        run = post_open_loop(fleet.api_url, WEBHOOK_SECRET, requests, args.rate, args.connections)
    wait_drained(books, args.timeout, "every trade accumulated and every order recorded")
    answered = {trades[0]["id"]: answer.answered for answer, trades in zip(run.answers, requests, strict=True)}
    orders = orders_from_books(books, answered, stub, {}, clock)
    check_exact(fleet, books, stub, requests, known_orders)
    symbol_of = {str(cid): str(symbol) for cid, symbol in books.rows("SELECT client_order_id, symbol FROM executions")}
    received = books.rows(
        "SELECT extract(epoch FROM accumulated_at - received_at) FROM trades WHERE NOT symbol = ANY(%s)", (sick,)
    )
    notes = [f"{len(requests):,} webhooks, {len(orders):,} orders; sends behind schedule p99 "
             f"{percentile(run.late_ms, 99):.0f} ms"]  # fmt: skip
    if percentile(run.late_ms, 99) > 100:
        notes.append(f"note: the API did not keep up with {args.rate}/s here; the figures include that backlog")
    if with_faults:
        served = Counter(stub.faults_injected) - faults_before
        notes.append(f"hanging: {', '.join(sick)} (held until the feed ends); stub faults served {dict(served)}")
    if with_kills:
        restarts = "the bench restarts a killed whole worker at once, as a process manager would"
        notes.append(f"SIGKILLs: {'; '.join(killer.done) or 'none'} ({restarts})")
    healthy = [o for o in orders if symbol_of[o.client_order_id] not in sick]
    notes += slowest_orders(books, healthy, args.slowest)
    return RunFigures(
        name,
        with_faults or with_kills,
        [float(seconds) for (seconds,) in received],
        [o.posted - o.last_answer for o in healthy],
        notes,
        len(killer.done),
    )


def check_exact(
    fleet: Fleet, books: Books, stub: TimedAlpacaStub, requests: list[list[dict[str, str]]], known: set[str]
) -> None:
    """Nothing lost, nothing twice: the broker and the books agree on every order of the run."""
    if stub.resent_after_accept:
        raise BenchError(f"an accepted order was sent again: {dict(stub.resent_after_accept)}")
    new = [order for key, order in list(stub.orders.items()) if key not in known]
    at_broker = {o["client_order_id"]: (o["symbol"], Decimal(o["filled_qty"])) for o in new}
    rows = books.rows("SELECT client_order_id, symbol, filled_quantity, status FROM executions")
    in_books = {str(cid): (str(symbol), Decimal(filled)) for cid, symbol, filled, _ in rows}
    if len(new) != len(at_broker) or at_broker != in_books or {status for *_, status in rows} - {"filled"}:
        raise BenchError(f"the broker and the books disagree: {len(at_broker)} orders at the broker, rows {len(rows)}")
    sent = Counter(trades[0]["symbol"] for trades in requests)
    filled: Counter[str] = Counter()
    for symbol, quantity in in_books.values():
        filled[symbol] += int(quantity)
    if filled != sent:
        raise BenchError(f"filled shares differ from the trades sent: {dict(filled - sent)} {dict(sent - filled)}")
    audit = httpx.get(f"{fleet.api_url}/audit", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60).json()
    if not audit["ok"] or not all(s["balanced"] for s in audit["symbols"]):
        raise BenchError(f"/audit is not ok: {audit}")


def slowest_orders(books: Books, orders: list[Order], count: int) -> list[str]:
    """The ``count`` slowest orders, 202 -> order, with what their execution rows say about the wait."""
    lines = []
    for order in sorted(orders, key=lambda o: o.posted - o.last_answer, reverse=True)[:count]:
        [(execution_id, symbol, waited, claims, attempts, unknown)] = books.rows(
            "SELECT id, symbol, extract(epoch FROM submitted_at - created_at), claims, submit_attempts,"
            " unknown_outcomes FROM executions WHERE client_order_id = %s",
            (order.client_order_id,),
        )
        submitted = "-" if waited is None else f"{float(waited) * 1000:.0f}"
        lines.append(
            f"slow order {execution_id} {symbol}: 202 -> order {(order.posted - order.last_answer) * 1000:.0f} ms,"
            f" 202 -> accumulated {(order.accumulated - order.last_answer) * 1000:.0f} ms, created -> submitted"
            f" {submitted} ms, {claims} claim(s), {attempts} attempt(s), {unknown} unknown outcome(s)"
        )
    return lines


def print_run(figures: RunFigures) -> None:
    for note in figures.notes:
        print(f"  {note}")
    print("  healthy symbols only (received -> accumulated per trade, in the database; 202 -> order per order):")
    for label, ms in figures.latencies_ms().items():
        target, p99 = TARGETS_MS[label][figures.faulted], percentile(ms, 99)
        print(
            f"  {label:36} n {len(ms):6,}  p50 {percentile(ms, 50):7.1f}  p90 {percentile(ms, 90):7.1f}"
            f"  p99 {p99:7.1f}  max {max(ms, default=float('nan')):8.1f} ms"
            f"   target p99 <= {target} ms: {'met' if p99 <= target else 'MISSED'}"
        )


def print_summary(runs: list[RunFigures]) -> None:
    print("\n== p99 of the healthy symbols, ms")
    for label, targets in TARGETS_MS.items():
        print(f"  {label} (target <= {targets[0]} healthy, <= {targets[1]} with faults)")
        for figures in runs:
            target, p99 = targets[figures.faulted], percentile(figures.latencies_ms()[label], 99)
            print(f"    {figures.name:10} {p99:9.1f}  {'met' if p99 <= target else 'MISSED'}")


def print_recoveries(bench: FleetBench, stub: TimedAlpacaStub, args: argparse.Namespace) -> None:
    print(f"\n== recovery after a SIGKILL (x{args.recoveries} each; seconds from the kill)", flush=True)
    kinds: list[tuple[str, Callable[[int], str]]] = [
        ("execution node, its order call held open -> order recorded",
         lambda n: recover_execution_node(bench, stub, n, args.timeout)),
        ("whole worker, trades waiting on it -> accumulated",
         lambda n: recover_prefork(bench, n, "whole worker", args.timeout)),
        ("prefork pool children, trades waiting -> accumulated",
         lambda n: recover_prefork(bench, n, "pool children", args.timeout)),
    ]  # fmt: skip
    for label, recover in kinds:
        print(f"  {label:60} {', '.join(recover(n) for n in range(args.recoveries))}", flush=True)
    check_exact_recoveries(bench, stub)


def check_exact_recoveries(bench: FleetBench, stub: TimedAlpacaStub) -> None:
    if stub.resent_after_accept:
        raise BenchError(f"an accepted order was sent again: {dict(stub.resent_after_accept)}")
    audit = httpx.get(f"{bench.fleet.api_url}/audit", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60)
    if not audit.json()["ok"]:
        raise BenchError(f"/audit is not ok after the recoveries: {audit.json()}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=200, help="webhooks (of 1 trade) per second")
    parser.add_argument("--seconds", type=int, default=20, help="length of each run's feed")
    parser.add_argument("--symbols", type=int, default=24)
    parser.add_argument("--hang-percent", type=int, default=15, help="symbols whose order calls hang")
    parser.add_argument("--error-percent", type=int, default=5, help="order POSTs and lookups answered 500")
    parser.add_argument("--kill-every", type=float, default=10, help="seconds between SIGKILLs")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"which runs, in order (of {', '.join(RUNS)})")
    parser.add_argument("--recoveries", type=int, default=2, help="SIGKILL recoveries per pool (0: none)")
    parser.add_argument("--connections", type=int, default=32, help="most webhook connections open at once")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the books to drain")
    parser.add_argument(
        "--slowest",
        type=int,
        default=0,
        metavar="N",
        help="list each run's N slowest healthy orders: their execution rows, to look up in --keep-logs",
    )
    add_fleet_options(parser)
    args = parser.parse_args(argv)
    args.runs = [run for run in args.runs.split(",") if run]
    if set(args.runs) - set(RUNS):
        parser.error(f"--runs: choose from {', '.join(RUNS)}")
    require_positive(parser, args, ("rate", "seconds", "symbols", "connections", "workers", "concurrency"))
    if not 0 <= args.hang_percent < 100 or not 0 <= args.error_percent <= 100 or args.kill_every <= 0:
        parser.error("--hang-percent must be 0..99, --error-percent 0..100, --kill-every above 0")
    if args.slowest < 0:
        parser.error("--slowest must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stub = TimedAlpacaStub()

    def measure(bench: FleetBench) -> None:
        warm_up(bench.fleet, bench.books, args)
        for label, value in machine(bench.books, bench.services.broker_url, bench.services.durability):
            print(f"{label:22} {value}")
        print(f"fleet: API x1, {args.workers} x `dustpan worker` (prefork x{args.concurrency} + execution threads)")
        print(f"each run: {args.rate}/s for {args.seconds} s over {args.symbols} symbols, 1 share a trade", flush=True)
        runs: list[RunFigures] = []
        for name in args.runs:
            runs.append(run_once(bench, stub, args, name, sum(r.kills for r in runs)))
            print_run(runs[-1])
        print_summary(runs)
        if args.recoveries:
            print_recoveries(bench, stub, args)

    with stub:
        return run_fleet_bench(args, measure, env=alpaca_env(stub))


if __name__ == "__main__":
    raise SystemExit(main())
