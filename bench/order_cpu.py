"""Worker CPU per whole-share order, next to a no-op Celery publish + run (SPEC 6: <= 3x).

    python bench/order_cpu.py [--orders 300] [--rate 20] [--symbols 10]
        [--workers W] [--concurrency K] [--database-url URL --broker-url URL]

Orders: the real API and workers (``dustpan worker`` as a user starts it: the prefork node on
``ingestion,ops`` and its threads node on ``execution``) against ``tests/support/alpaca_stub``,
as ``webhook_to_broker_latency.py`` runs them. One 1-share buy per webhook, sent open loop at
``--rate``/s round robin over ``--symbols`` symbols: slow enough that each trade is an order of
its own (the bench prints trades per order, and says so when they batch). Figure: the CPU
seconds (user + system) of every worker process tree (main process, pool children, the
execution node) from the first webhook until the last order is filled at the stub, divided by
the orders. The same workers' CPU over an idle span as long (sweep threads, claim heartbeats,
Celery's timers) is printed, and the figure is given gross and net of it.

Ceiling, in the same run on the same broker: ``bench/noop_app.py`` workers (``dustpan worker``
itself with a ``bench.noop`` task: same celeryconfig, options, count and concurrency) run as
many no-op tasks, published one by one at the same rate from a thread of this process. Its
figure per task: the workers' CPU plus the publishing thread's own CPU (``time.thread_time``).

An order costs more than one task by construction (an accumulate run, then a submit in the
execution pool that looks nothing up on a first claim and POSTs once, and their transactions),
so read the ratio against the 3x target. Prints figures; never asserts on time. Exits non-zero
only if something broke.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support lives next to bench/

import redis

from bench._fleet_bench import WEBHOOK_SECRET, FleetBench, run_fleet_bench
from bench._measure import BenchError, CpuRoles, machine
from bench._noop_ceiling import _noop_task, start_noop_workers
from bench._webhook_client import post_open_loop
from bench.webhook_to_broker_latency import TimedAlpacaStub, alpaca_env, paced_trades, warm_up
from tests.support.fleet import DustpanProcess, wait_for

TARGET_RATIO = 3


def _worker_cpu(bench: FleetBench) -> CpuRoles:
    return CpuRoles({"workers": [w.pid for w in bench.fleet.workers]})


def measure_orders(bench: FleetBench, args: argparse.Namespace) -> tuple[float, float, int, int]:
    """Worker CPU s for the orders, worker CPU s idle over as long, orders, trades."""
    cpu = _worker_cpu(bench)
    seconds = max(1, args.orders // args.rate)
    trades = paced_trades(args.rate, seconds, args.symbols, "CPU")
    wait_for(lambda: _settled(bench), args.timeout, "the warm-up orders to be filled")
    filled_before = bench.books.value("SELECT count(*) FROM executions WHERE status = 'filled'")
    idle = _cpu_over(cpu, "workers", seconds)
    start = cpu.snapshot()["workers"]
    post_open_loop(bench.fleet.api_url, WEBHOOK_SECRET, trades, args.rate, 8)
    wait_for(lambda: _settled(bench), args.timeout, "every order to be filled")
    used = cpu.snapshot()["workers"] - start
    orders = bench.books.value("SELECT count(*) FROM executions WHERE status = 'filled'") - filled_before
    if orders < 1:
        raise BenchError("no order was filled")
    return used, idle, orders, len(trades)


def _settled(bench: FleetBench) -> bool:
    waiting = bench.books.value("SELECT count(*) FROM trades WHERE status = 'received'")
    in_flight = bench.books.value("SELECT count(*) FROM executions WHERE status IN ('pending', 'submitted')")
    return not waiting and not in_flight


def _cpu_over(cpu: CpuRoles, role: str, seconds: float) -> float:
    """CPU s the role burns over ``seconds`` of doing nothing asked of it."""
    start = cpu.snapshot()[role]
    time.sleep(seconds)
    return cpu.snapshot()[role] - start


def measure_noop(bench: FleetBench, args: argparse.Namespace, tasks: int) -> tuple[float, float, float]:
    """CPU s of the no-op workers and of the publishing thread for ``tasks`` tasks at ``--rate``,
    and the workers' CPU s idle over as long."""
    from bench.noop_app import NOOP_QUEUE, RAN_KEY

    env = bench.fleet.env
    noop = _noop_task(env)
    broker = redis.Redis.from_url(env["DUSTPAN_BROKER_URL"])
    processes: list[DustpanProcess] = []
    try:
        start_noop_workers(processes, env, bench.logs, args.workers, args.concurrency)
        _trickle_noop(noop, NOOP_QUEUE, broker, RAN_KEY, 20, args.rate, args.timeout)  # warm up
        cpu = CpuRoles({"noop workers": [p.pid for p in processes]})
        idle = _cpu_over(cpu, "noop workers", max(1, tasks // args.rate))
        before = cpu.snapshot()["noop workers"]
        publishing = _trickle_noop(noop, NOOP_QUEUE, broker, RAN_KEY, tasks, args.rate, args.timeout)
        return cpu.snapshot()["noop workers"] - before, publishing, idle
    finally:
        for process in processes:
            process.stop()
        broker.close()


def _trickle_noop(
    noop: object, queue: str, broker: redis.Redis, key: str, tasks: int, rate: int, timeout: float
) -> float:
    """Publish ``tasks`` no-op tasks at ``rate``/s from one thread; its CPU s once all have run."""
    broker.delete(key)
    spent: list[float] = []
    failures: list[BaseException] = []

    def publish() -> None:
        begin, due = time.thread_time(), time.perf_counter()
        try:
            for _ in range(tasks):
                noop.apply_async(queue=queue)  # type: ignore[attr-defined]
                due += 1 / rate
                time.sleep(max(0.0, due - time.perf_counter()))
        except BaseException as exc:  # reported below
            failures.append(exc)
        spent.append(time.thread_time() - begin)

    thread = threading.Thread(target=publish, name="noop-publisher")
    thread.start()
    deadline = time.perf_counter() + timeout + tasks / rate
    while int(broker.get(key) or 0) < tasks:
        if failures:
            raise BenchError(f"publishing no-op tasks failed: {failures[0]!r}")
        if time.perf_counter() > deadline:
            raise BenchError(f"only {int(broker.get(key) or 0)} of {tasks} no-op tasks ran before the timeout")
        time.sleep(0.05)
    thread.join()
    return spent[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=300, help="trades sent, one 1-share buy each")
    parser.add_argument("--rate", type=int, default=20, help="webhooks (and no-op tasks) per second")
    parser.add_argument("--symbols", type=int, default=40, help="enough that each trade is an order")
    parser.add_argument("--connections", type=int, default=8, help="webhook connections for the warm-up")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (and no-op workers)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork pool size of each worker")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the orders to fill")
    parser.add_argument("--database-url", help="a PostgreSQL server where the bench may create a database")
    parser.add_argument("--broker-url", help="a Redis for the Celery broker")
    args = parser.parse_args(argv)
    for name in ("orders", "rate", "symbols", "workers", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    stub = TimedAlpacaStub()

    def measure(bench: FleetBench) -> None:
        warm_up(bench.fleet, bench.books, args)
        for label, value in machine(bench.books, bench.services.broker_url, bench.services.durability):
            print(f"{label:22} {value}")
        print(f"fleet: API x1, {args.workers} worker(s) x concurrency {args.concurrency}, Alpaca stub")
        print(f"{args.orders} one-share buys at {args.rate}/s over {args.symbols} symbols ...", flush=True)
        used, idle, orders, trades = measure_orders(bench, args)
        noop_cpu, publish_cpu, noop_idle = measure_noop(bench, args, orders)
        print(f"\n{orders} orders filled for {trades} trades ({trades / orders:.2f} trades per order)")
        if trades > orders * 1.05:
            print("note: trades were batched into fewer orders; lower --rate or raise --symbols")
        gross = (used / orders, (noop_cpu + publish_cpu) / orders)
        net = ((used - idle) / orders, (noop_cpu - noop_idle + publish_cpu) / orders)
        print(f"{'per order / per no-op task, CPU ms':36} {'order':>8} {'no-op':>8} {'ratio':>7}")
        for label, (order, noop_task) in (("gross", gross), ("net of the workers' idle CPU", net)):
            ratio = order / noop_task
            verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
            print(
                f"{label:36} {order * 1000:8.2f} {noop_task * 1000:8.2f} {ratio:6.2f}x"
                f"   target <= {TARGET_RATIO}x: {verdict}"
            )
        print(
            f"(workers {used:.2f} s for the orders, {idle:.2f} s idle over as long; no-op workers {noop_cpu:.2f} s,"
            f" {noop_idle:.2f} s idle; publisher {publish_cpu:.2f} s)"
        )

    with stub:
        return run_fleet_bench(args, measure, env=alpaca_env(stub))


if __name__ == "__main__":
    raise SystemExit(main())
