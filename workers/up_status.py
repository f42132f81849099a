"""The status line of `dustpan up`: queue depths, trade rate, latency, executions, audit, restarts.

Read by the supervisor from the services it started (explicit URLs: its own settings may
name none), so it works the same on embedded and on external PostgreSQL and Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from sqlalchemy import func, select, text

from models.db import UnitOfWork
from models.tables import Execution, Trade

QUEUES = ("ingestion", "execution", "ops")
EXECUTION_STATES = ("pending", "submitted", "filled")
# kombu's Redis transport keeps a queue as a list named after it, plus one sibling list per
# priority step ("<queue>" + Channel.sep + "<step>") for messages sent with a priority.
_PRIORITY_SUFFIXES = tuple(f"{Channel.sep}{step}" if step else "" for step in PRIORITY_STEPS)
# However often the line refreshes, the audit runs at most this often.
AUDIT_EVERY_SECONDS = 10
_REDIS_TIMEOUT_SECONDS = 2
LATENCY_WINDOW_SECONDS = 60
# The p99 of the last minute's waits, read from the stamps the rows carry (the histograms of
# workers/metrics.py observe the same differences): trades by accumulated_at, and hedge orders
# by submitted_at against their oldest direct trade (tasks.lineage.first_received_at). Both
# windows are range scans of the partial indexes of migration 0009, whatever the history.
LATENCY_P99_SQL = text(
    "SELECT"
    " (SELECT percentile_disc(0.99) WITHIN GROUP (ORDER BY t.accumulated_at - t.received_at)"
    "  FROM trades t WHERE t.accumulated_at > now() - make_interval(secs => :window)),"
    " (SELECT percentile_disc(0.99) WITHIN GROUP (ORDER BY e.submitted_at - first.received_at)"
    "  FROM executions e CROSS JOIN LATERAL (SELECT min(t.received_at) AS received_at"
    "   FROM contributions c JOIN trades t ON t.id = c.trade_id WHERE c.execution_id = e.id) first"
    "  WHERE e.submitted_at > now() - make_interval(secs => :window) AND e.source = 'hedge'"
    "  AND first.received_at IS NOT NULL)"
)


@dataclass(frozen=True)
class StackStatus:
    queues: dict[str, int]  # messages waiting per Celery queue
    trades_per_second: Decimal  # trades accepted over the last window
    executions: dict[str, int]  # by status: pending, submitted, filled
    imbalances: int  # symbols the latest audit found unbalanced
    restarts: int  # children restarted by the supervisor
    # p99 over the last minute: trade received -> accumulated, and -> its order at the broker
    accumulated_p99: timedelta | None = None
    ordered_p99: timedelta | None = None

    def line(self) -> str:
        queues = " ".join(f"{name} {depth}" for name, depth in self.queues.items())
        executions = " ".join(f"{status} {n}" for status, n in self.executions.items())
        latency = f"accumulated {duration_text(self.accumulated_p99)}, ordered {duration_text(self.ordered_p99)}"
        return (
            f"queue {queues} | trades/s {self.trades_per_second} | p99 1m {latency} | executions {executions} | "
            f"imbalances {self.imbalances} | restarts {self.restarts}"
        )


def duration_text(wait: timedelta | None) -> str:
    """``-`` for no data, whole milliseconds below 10 s, else seconds with one decimal."""
    if wait is None:
        return "-"
    microseconds = Decimal(max(0, wait // timedelta(microseconds=1)))
    if microseconds < 10_000_000:
        return f"{(microseconds / 1000).quantize(Decimal(1))} ms"
    return f"{(microseconds / 1_000_000).quantize(Decimal('0.1'))} s"


class ThrottledAudit:
    """The number of unbalanced symbols, audited again only once ``every_seconds`` have passed."""

    def __init__(
        self,
        uow: UnitOfWork,
        threshold: Decimal,
        every_seconds: int = AUDIT_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,  # float-ok: seconds
    ) -> None:
        self.uow, self.threshold, self.every_seconds, self.clock = uow, threshold, every_seconds, clock
        self._last: tuple[float, int] | None = None  # float-ok: (monotonic time, imbalances)

    def __call__(self) -> int:
        if self._last is None or self.clock() - self._last[0] >= self.every_seconds:
            # Imported here: tasks.audit loads the Celery app, which `up` needs only once it runs.
            from tasks.audit import audit_books

            report = audit_books(self.uow, self.threshold, datetime.now(UTC))
            self._last = (self.clock(), sum(1 for symbol in report.symbols if not symbol.balanced))
        return self._last[1]


def read_status(
    uow: UnitOfWork, client: redis.Redis, audit: Callable[[], int], *, window_seconds: int, restarts: int
) -> StackStatus:
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    lengths = pipe.execute()
    steps = len(_PRIORITY_SUFFIXES)
    queues = {queue: sum(lengths[i * steps : (i + 1) * steps]) for i, queue in enumerate(QUEUES)}
    with uow:
        # The database's clock, as received_at is: the supervisor's may differ.
        since = func.now() - timedelta(seconds=window_seconds)
        recent = uow.session.scalar(select(func.count()).select_from(Trade).where(Trade.received_at > since))
        rows = uow.session.execute(
            select(Execution.status, func.count())
            .where(Execution.status.in_(EXECUTION_STATES))
            .group_by(Execution.status)
        ).all()
        accumulated_p99, ordered_p99 = uow.session.execute(LATENCY_P99_SQL, {"window": LATENCY_WINDOW_SECONDS}).one()
    counts = {status: n for status, n in rows}
    return StackStatus(
        queues=queues,
        trades_per_second=(Decimal(recent or 0) / window_seconds).quantize(Decimal("0.1")),
        executions={status: counts.get(status, 0) for status in EXECUTION_STATES},
        imbalances=audit(),
        restarts=restarts,
        accumulated_p99=accumulated_p99,
        ordered_p99=ordered_p99,
    )


class StatusReader:
    """The status of the stack at ``database_url`` and ``broker_url``, for the supervisor's loop."""

    def __init__(self, database_url: str, broker_url: str, threshold: Decimal) -> None:
        self.uow = UnitOfWork(database_url)
        self.client = redis.Redis.from_url(
            broker_url, socket_timeout=_REDIS_TIMEOUT_SECONDS, socket_connect_timeout=_REDIS_TIMEOUT_SECONDS
        )
        self.audit = ThrottledAudit(self.uow, threshold)

    def line(self, window_seconds: int, restarts: int) -> str:
        stamp = datetime.now().strftime("%H:%M:%S")
        try:
            status = read_status(self.uow, self.client, self.audit, window_seconds=window_seconds, restarts=restarts)
        except Exception as exc:  # a database or Redis restarting must not stop the supervisor
            first_line = (str(exc).strip().splitlines() or [""])[0]
            return f"{stamp} status unavailable ({type(exc).__name__}: {first_line}) | restarts {restarts}"
        return f"{stamp} {status.line()}"

    def close(self) -> None:
        self.client.close()
