"""Prometheus metrics for the whole fleet: counters kept in Redis, gauges read from the books.

Counters (webhook outcomes, latency histograms, Celery task successes, failures and retries) are
written with HINCRBY into Redis hashes instead of per-process memory: the API may run as several
uvicorn processes and the workers run on other hosts, so only a store that every process
shares adds them up, and any API process can answer a scrape with the fleet's totals.
prometheus_client's multiprocess mode would only cover processes sharing one local directory.
Gauges (accumulator nets and lag, executions by status, audit imbalances, brokerage calls in
flight) are aggregated from PostgreSQL at scrape time, and queue depths are read from the
broker's Redis lists.
A metrics write never fails a webhook or a task: it logs and goes on.

Flower serves worker-side metrics of its own at its ``/metrics`` (task runtimes, events and
prefetch per worker, from the event stream); `dustpan flower` keeps that endpoint behind the
same basic auth as the rest of Flower (workers/flower.py), so a Prometheus job scraping it
needs the Flower credentials.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import extract, func, select, text

from models.tables import EXECUTION_SOURCES, EXECUTION_STATUSES, Accumulator, Execution, Position, Trade
from models.tables_ops import AccountPause, OrderCallHealth
from tasks.ports import Latencies
from workers import runtime
from workers.metric_batch import IncrementBatch

if TYPE_CHECKING:
    from tasks.ingestion import StoreResult

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RESPONSES_KEY = "dustpan:metrics:webhook_responses"  # field: HTTP status
TRADES_KEY = "dustpan:metrics:webhook_trades"  # field: accepted | duplicate | conflict
LATENCY_KEY = "dustpan:metrics:webhook_latency"  # fields: le:<bound> (not cumulative), sum_ns
# Same fields: trade received -> accumulated, and received -> its order known at the broker.
ACCUMULATED_KEY = "dustpan:metrics:trade_accumulated_latency"
SUBMITTED_KEY = "dustpan:metrics:trade_submitted_latency"
TASK_SUCCESSES_KEY = "dustpan:metrics:task_successes"  # field: task name
TASK_FAILURES_KEY = "dustpan:metrics:task_failures"  # field: task name
TASK_RETRIES_KEY = "dustpan:metrics:task_retries"  # field: task name
AUDIT_CACHE_KEY = "dustpan:metrics:audit_unbalanced"
# One audit run per this many seconds serves all scrapers of the fleet (cheap now, but per scrape it adds up).
AUDIT_CACHE_SECONDS = 30
TRADE_OUTCOMES = ("accepted", "duplicate", "conflict")
# Upper bounds in seconds, as exact text; observations are integer nanoseconds.
LATENCY_BOUNDS = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10")
# A trade's wait has the SPEC 6 targets (250 ms, 1 s; 100 ms, 500 ms) inside, and room for a hang.
TRADE_LATENCY_BOUNDS = ("0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "300")
# Short timeouts: an unreachable Redis may cost a webhook or a task half a second, not five.
_REDIS_TIMEOUT_SECONDS = 0.5  # float-ok: a duration


def redis_client() -> redis.Redis:
    return _redis_for_process(os.getpid())


@lru_cache(maxsize=1)
def _redis_for_process(_pid: int) -> redis.Redis:
    return redis.Redis.from_url(
        runtime.settings().broker_url or "",
        socket_timeout=_REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=_REDIS_TIMEOUT_SECONDS,
    )


# --- recording -------------------------------------------------------------------------

# What tasks count: written by one thread per process, not on the task's path.
TASK_METRICS = IncrementBatch(redis_client)


def _bounds_ns(bounds: Sequence[str]) -> tuple[tuple[str, int], ...]:
    return tuple((bound, int(Decimal(bound).scaleb(9))) for bound in bounds)


_BOUNDS_NS = _bounds_ns(LATENCY_BOUNDS)
_TRADE_BOUNDS_NS = _bounds_ns(TRADE_LATENCY_BOUNDS)


def latency_field(elapsed_ns: int, bounds_ns: Sequence[tuple[str, int]] = _BOUNDS_NS) -> str:
    """The hash field of the first bucket whose upper bound holds the observation."""
    return next((f"le:{bound}" for bound, ns in bounds_ns if elapsed_ns <= ns), "le:+Inf")


class RedisLatencies(Latencies):
    """The ``Latencies`` port: trade waits as histogram buckets in Redis hashes, added up in the
    process and written every half second (``workers.metric_batch``). A wait below zero (the
    worker's clock behind the database's, which stamped received_at) counts as zero."""

    def __init__(self, batch: IncrementBatch | None = None) -> None:
        self._batch = batch or TASK_METRICS

    def accumulated(self, waits: Sequence[timedelta]) -> None:
        self._observe(ACCUMULATED_KEY, waits)

    def submitted(self, wait: timedelta) -> None:
        self._observe(SUBMITTED_KEY, [wait])

    def _observe(self, key: str, waits: Sequence[timedelta]) -> None:
        if not waits:
            return
        fields: Counter[str] = Counter()
        for wait in waits:
            ns = max(0, wait // timedelta(microseconds=1)) * 1000
            fields[latency_field(ns, _TRADE_BOUNDS_NS)] += 1
            fields["sum_ns"] += ns
        self._batch.add(key, fields)


def record_webhook(status: int, result: StoreResult | None, elapsed_ns: int, client: redis.Redis | None = None) -> None:
    """Count one webhook response, its trade outcomes and its latency, in one round trip."""
    record_webhooks([(status, result, elapsed_ns)], client)


def record_webhooks(
    responses: Sequence[tuple[int, StoreResult | None, int]], client: redis.Redis | None = None
) -> None:
    """Count webhook responses (status, result, elapsed ns), their trades and latencies, in one round trip."""
    statuses: Counter[str] = Counter()
    trades: Counter[str] = Counter()
    latency: Counter[str] = Counter()
    for status, result, elapsed_ns in responses:
        statuses[str(status)] += 1
        if result is not None:
            trades.update(accepted=result.accepted, duplicate=result.duplicates, conflict=len(result.conflicts))
        latency[latency_field(elapsed_ns)] += 1
        latency["sum_ns"] += elapsed_ns
    try:
        pipe = (client or redis_client()).pipeline(transaction=False)
        for key, counts in ((RESPONSES_KEY, statuses), (TRADES_KEY, trades), (LATENCY_KEY, latency)):
            for name, n in counts.items():
                pipe.hincrby(key, name, n)
        pipe.execute()
    except (redis.RedisError, OSError) as exc:
        log.warning("webhook metrics not recorded (statuses %s): %s", ", ".join(statuses), exc)


def _count_task_event(key: str, sender: Any, client: redis.Redis | None) -> None:
    name = getattr(sender, "name", None) or "unknown"
    if client is None:  # a task's own process: added up there, written every half second
        TASK_METRICS.add(key, {name: 1})
        return
    try:
        client.hincrby(key, name, 1)
    except Exception as exc:  # a signal handler must never raise into the task it reports on
        log.warning("task metric %s for %s not recorded: %s", key, name, exc)


def count_task_success(sender: Any = None, client: redis.Redis | None = None, **_: Any) -> None:
    """Celery ``task_success`` handler (the sender is the task)."""
    _count_task_event(TASK_SUCCESSES_KEY, sender, client)


def count_task_failure(sender: Any = None, client: redis.Redis | None = None, **_: Any) -> None:
    """Celery ``task_failure`` handler (the sender is the task)."""
    _count_task_event(TASK_FAILURES_KEY, sender, client)


def count_task_retry(sender: Any = None, client: redis.Redis | None = None, **_: Any) -> None:
    """Celery ``task_retry`` handler (the sender is the task)."""
    _count_task_event(TASK_RETRIES_KEY, sender, client)


# --- scraping --------------------------------------------------------------------------


def render() -> bytes:
    """The Prometheus text exposition of every dustpan metric, read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ScrapeCollector(redis_client()))
    return generate_latest(registry)


def _sample(value: Decimal | int) -> float:
    return float(value)  # float-ok: Prometheus samples are float64; the books stay Decimal


class _ScrapeCollector(Collector):
    """Reads every source once per scrape; a source that fails is reported down, not raised."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "dustpan_metrics_source_up", "1 if the source answered this scrape, else 0", labels=["source"]
        )
        for source, families in (("redis", self._counters), ("database", self._book_gauges)):
            try:
                collected = list(families())
            except Exception as exc:  # the other source's metrics are still worth serving
                log.warning("metrics source %s unavailable: %s", source, exc)
                collected = []
            up.add_metric([source], 1 if collected else 0)
            yield from collected
        yield up

    def _counters(self) -> Iterator[Metric]:
        pipe = self.client.pipeline(transaction=False)
        hashes = (RESPONSES_KEY, TRADES_KEY, LATENCY_KEY, TASK_SUCCESSES_KEY, TASK_FAILURES_KEY, TASK_RETRIES_KEY)
        for key in (*hashes, ACCUMULATED_KEY, SUBMITTED_KEY):
            pipe.hgetall(key)
        queues = _queue_keys()
        for keys in queues.values():
            for key in keys:
                pipe.llen(key)
        replies = pipe.execute()
        responses, trades, latency, successes, failures, retries, accumulated, submitted = map(_as_ints, replies[:8])
        lengths = iter(replies[8:])
        yield _counter("dustpan_webhook_responses", "Trade webhook responses by HTTP status", "status", responses)
        trades = {outcome: trades.get(outcome, 0) for outcome in TRADE_OUTCOMES}
        yield _counter("dustpan_webhook_trades", "Trades in webhooks: accepted, duplicate, conflict", "outcome", trades)
        yield _histogram(
            "dustpan_webhook_duration_seconds", "Trade webhook handling time, every response", LATENCY_BOUNDS, latency
        )
        yield _histogram(
            "dustpan_trade_received_to_accumulated_seconds",
            "Per trade: accumulated_at - received_at (GET /trades/{id})",
            TRADE_LATENCY_BOUNDS,
            accumulated,
        )
        yield _histogram(
            "dustpan_trade_received_to_submitted_seconds",
            "Per hedge order: its submitted_at - received_at of the oldest trade it took shares from directly",
            TRADE_LATENCY_BOUNDS,
            submitted,
        )
        yield _counter("dustpan_task_successes", "Celery tasks that returned, by task name", "task", successes)
        yield _counter("dustpan_task_failures", "Celery tasks that raised, by task name", "task", failures)
        yield _counter("dustpan_task_retries", "Celery task retries, by task name", "task", retries)
        depth = GaugeMetricFamily(
            "dustpan_queue_depth",
            "Messages waiting in the broker per queue (not yet taken by a worker)",
            labels=["queue"],
        )
        for queue, keys in queues.items():
            depth.add_metric([queue], _sample(sum(next(lengths) for _ in keys)))
        yield depth

    def _book_gauges(self) -> Iterator[Metric]:
        with runtime.unit_of_work() as uow:
            nets = uow.session.execute(select(Accumulator.symbol, Accumulator.net_quantity)).all()
            # Both ends on the database clock: received_at is its now() at insert.
            waiting, lag = uow.session.execute(
                select(
                    func.count(),
                    func.coalesce(extract("epoch", func.now() - func.min(Trade.received_at)), 0),
                ).where(Trade.status == "received")
            ).one()
            counts = uow.session.execute(
                select(Execution.source, Execution.status, func.count()).group_by(Execution.source, Execution.status)
            ).all()
            paused = uow.session.execute(select(AccountPause.account, AccountPause.refusals)).all()
            breakers = uow.session.scalars(
                select(OrderCallHealth.symbol).where(OrderCallHealth.state != "closed")
            ).all()
            held = uow.session.scalar(
                select(func.count()).where(
                    Execution.status.in_(("pending", "submitted")),
                    Execution.unknown_outcomes >= runtime.settings().execution.alert_after_unknown_outcomes,
                )
            )
            orphans = uow.session.scalar(
                select(func.count()).select_from(Position).where(Position.status == "dust_orphaned")
            )
            calls = uow.session.execute(_CALLS_IN_FLIGHT).all()
        net = GaugeMetricFamily(
            "dustpan_accumulator_net_quantity", "Signed net quantity waiting per symbol", labels=["symbol"]
        )
        for symbol, quantity in sorted(nets):
            net.add_metric([symbol], _sample(quantity))
        yield net
        yield GaugeMetricFamily(
            "dustpan_accumulator_waiting_trades", "Stored trades not yet accumulated", value=_sample(waiting)
        )
        yield GaugeMetricFamily(
            "dustpan_accumulator_lag_seconds",
            "Age of the oldest trade not yet accumulated (0 if none)",
            value=_sample(lag),
        )
        by_status = {(source, status): 0 for source in EXECUTION_SOURCES for status in EXECUTION_STATUSES}
        by_status.update({(source, status): n for source, status, n in counts})
        executions = GaugeMetricFamily(
            "dustpan_executions", "Executions by status and source", labels=["status", "source"]
        )
        for (source, status), n in sorted(by_status.items()):
            executions.add_metric([status, source], _sample(n))
        yield executions
        accounts = GaugeMetricFamily(
            "dustpan_account_paused",
            "1 while the broker refuses the account as a whole and its orders are held",
            labels=["account"],
        )
        for account, _refusals in sorted(paused):
            accounts.add_metric([account], 1)
        yield accounts
        open_breakers = GaugeMetricFamily(
            "dustpan_order_breaker_open",
            "1 while a symbol's order breaker is open or probing: its executions wait, the others trade",
            labels=["symbol"],
        )
        for symbol in sorted(breakers):
            open_breakers.add_metric([symbol], 1)
        yield open_breakers
        yield GaugeMetricFamily(
            "dustpan_executions_outcome_unknown",
            "In-flight executions whose broker answers have said nothing for the alert threshold or more",
            value=_sample(held or 0),
        )
        yield GaugeMetricFamily(
            "dustpan_dust_orphaned_positions",
            "Exit remainders whose closing order failed, waiting for the cleanup job to retry them",
            value=_sample(orphans or 0),
        )
        in_flight = GaugeMetricFamily(
            "dustpan_brokerage_calls_in_flight",
            "Executions whose brokerage call is under way (a live claim), by the worker node that holds it",
            labels=["pool"],
        )
        for pool, n in calls:
            in_flight.add_metric([pool], _sample(n))
        yield in_flight
        yield GaugeMetricFamily(
            "dustpan_audit_unbalanced_symbols",
            f"Symbols failing the SPEC section 5 audit (cached up to {AUDIT_CACHE_SECONDS} s)",
            value=_sample(self._unbalanced_symbols()),
        )

    def _unbalanced_symbols(self) -> int:
        # Imported here: tasks.audit imports the Celery app, which imports this module.
        from tasks.audit import audit_books

        try:
            cached = self.client.get(AUDIT_CACHE_KEY)
        except (redis.RedisError, OSError):
            cached = None
        if cached is not None:
            return int(cached)
        config = runtime.settings().accumulation
        report = audit_books(runtime.unit_of_work(), config.threshold, runtime.now())
        unbalanced = sum(1 for symbol in report.symbols if not symbol.balanced)
        try:
            self.client.set(AUDIT_CACHE_KEY, unbalanced, ex=AUDIT_CACHE_SECONDS)
        except (redis.RedisError, OSError) as exc:
            log.warning("audit result not cached: %s", exc)
        return unbalanced


# A call under way holds its execution's claim (tasks.execution): claimed_by is "<node>:<pid>
# <nonce>", claimed_until a lease its heartbeat renews. Counting live leases is crash-safe: a
# killed worker's calls leave the count when their leases lapse, within a few seconds. Only
# in-flight executions carry claims, so the partial index ix_executions_open bounds the scan.
_CALLS_IN_FLIGHT = text(
    "SELECT regexp_replace(split_part(claimed_by, ' ', 1), ':[0-9]+$', '') AS pool, count(*)"
    " FROM executions WHERE status IN ('pending', 'submitted') AND claimed_until > now()"
    " GROUP BY 1 ORDER BY 1"
)


def _queue_keys() -> dict[str, list[str]]:
    """The Redis lists of each queue: kombu keeps a queue as a list named after it, plus one
    list per priority step ("<queue>" + Channel.sep + "<step>") for messages sent with a priority."""
    import celeryconfig  # the queue declarations; imported late, like the Celery app

    options: dict[str, Any] = dict(celeryconfig.broker_transport_options)
    prefix = str(options.get("global_keyprefix", ""))
    steps = options.get("priority_steps", PRIORITY_STEPS)
    return {
        queue.name: [
            f"{prefix}{queue.name}",
            *(f"{prefix}{queue.name}{Channel.sep}{step}" for step in steps if step),
        ]
        for queue in celeryconfig.task_queues
    }


def _as_ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {field.decode(): int(value) for field, value in raw.items()}


def _counter(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([value], _sample(count))
    return family


def _histogram(name: str, documentation: str, bounds: Sequence[str], fields: dict[str, int]) -> HistogramMetricFamily:
    buckets, cumulative = [], 0
    for bound in (*bounds, "+Inf"):
        cumulative += fields.get(f"le:{bound}", 0)
        buckets.append((bound, _sample(cumulative)))
    seconds = Decimal(fields.get("sum_ns", 0)).scaleb(-9)
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=_sample(seconds))
