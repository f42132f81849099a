"""Ceiling (b): PostgreSQL alone doing the ingestion's SQL, issued directly with psycopg2.

Per webhook, one transaction: the statement ``tasks.ingestion.store_trades`` runs (its own
text, the array INSERT ... ON CONFLICT DO NOTHING RETURNING id, rows in id order), then
COMMIT, from as many connections as the bench has webhook clients. Meanwhile one connection
does what ``accumulate_symbol`` does, batched the way the app batches (up to
``accumulation.batch_size`` trades a run, polling every ``IDLE_POLL_SECONDS`` when idle where
the app is woken): take the symbol's run lock, claim and mark the waiting trades and add them to the accumulator
row (one statement, ``_CLAIM_AND_NET``), and when the net reaches the threshold read the open
portions (and a freeze), plan the execution (``models.domain.accumulation.plan_execution``) and
write it, its takes and its contributions (one statement), then take its shares from the net;
then COMMIT. The app's own
statement texts wherever the app has one. No HTTP, no Celery, no ORM,
no Redis; the orders are not submitted (the end-to-end run's ``execution.submit`` tasks are
extra work this ceiling does not do).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg2
from sqlalchemy.dialects import postgresql

from bench._measure import BenchError
from models.domain.accumulation import Portion, plan_execution
from models.domain.quantities import ZERO
from tasks.ingestion import (
    _CLAIM_AND_NET,
    _CREATE_EXECUTION,
    _INSERT_TRADES,
    _OPEN_PORTIONS,
    _WRITE_NET_ONLY,
    _trade_columns,
    accumulate_lock_key,
    create_execution_parameters,
)
from workers.settings import AccumulationSettings
from workers.webhook import read_trades


def _psycopg2_text(statement: Any) -> str:
    """The SQLAlchemy ``text()`` the app runs, with its :name parameters in psycopg2's spelling."""
    text = getattr(statement, "element", statement).text  # a text(), or its .columns() form
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", str(text))


INSERT_TRADES = _psycopg2_text(_INSERT_TRADES)
CLAIM_AND_NET = _psycopg2_text(_CLAIM_AND_NET)
OPEN_PORTIONS = _psycopg2_text(_OPEN_PORTIONS)
CREATE_EXECUTION = _psycopg2_text(_CREATE_EXECUTION)
WRITE_NET_ONLY = str(_WRITE_NET_ONLY.compile(dialect=postgresql.psycopg2.dialect()))
CREATE_ACCUMULATOR = "INSERT INTO accumulators (symbol) VALUES (%s) ON CONFLICT (symbol) DO NOTHING"


IDLE_POLL_SECONDS = 0.005  # float-ok: seconds


@dataclass
class PgCeiling:
    trades: int
    per_transaction: int
    connections: int
    inserted_seconds: float  # first INSERT to the last webhook transaction committed
    accumulated_seconds: float  # first INSERT to the last trade accumulated
    accumulate_runs: int
    executions: int

    @property
    def trades_per_second(self) -> float:
        return self.trades / self.accumulated_seconds

    @property
    def inserted_per_second(self) -> float:
        return self.trades / self.inserted_seconds


def run_pg_ceiling(url: str, symbol: str, batches: list[list[dict[str, str]]], connections: int) -> PgCeiling:
    """``batches`` are webhook bodies' trades; the database must hold none of them yet."""
    # Parsed as the API parses them, columns built as store_trades builds them, before the clock starts.
    columns = []
    for batch in batches:
        incoming = read_trades(json.dumps({"trades": batch}).encode(), len(batch))
        columns.append(_trade_columns(sorted(incoming, key=lambda trade: trade.id)))
    total = sum(len(batch) for batch in batches)
    shares = [columns[n::connections] for n in range(connections)]
    failures: list[BaseException] = []
    inserted_at = [0.0] * connections
    accumulator = _Accumulator(url, symbol, total)

    def insert_share(n: int) -> None:
        try:
            connection = psycopg2.connect(url)
            try:
                with connection.cursor() as cursor:
                    for params in shares[n]:
                        cursor.execute(INSERT_TRADES, params)
                        if len(cursor.fetchall()) != len(params["ids"]):
                            raise BenchError("the PostgreSQL ceiling found trades already stored")
                        connection.commit()
            finally:
                connection.close()
            inserted_at[n] = time.perf_counter()
        except BaseException as exc:  # reported by the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=insert_share, args=(n,), name=f"pg-insert-{n}") for n in range(connections)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    accumulated_at = accumulator.run(failures)
    for thread in threads:
        thread.join()
    if failures:
        raise BenchError(f"PostgreSQL ceiling failed: {failures[0]!r}")
    return PgCeiling(
        total,
        len(batches[0]),
        connections,
        max(inserted_at) - start,
        accumulated_at - start,
        accumulator.runs,
        accumulator.executions,
    )


class _Accumulator:
    """accumulate_symbol's statements on one connection, until every trade is accumulated."""

    def __init__(self, url: str, symbol: str, expected: int) -> None:
        self.url, self.symbol, self.expected = url, symbol, expected
        settings = AccumulationSettings()
        self.batch_size, self.threshold = settings.batch_size, settings.threshold
        self.runs = self.executions = 0

    def run(self, failures: list[BaseException], timeout: float = 600) -> float:
        connection = psycopg2.connect(self.url)
        deadline = time.perf_counter() + timeout
        applied = 0
        try:
            while applied < self.expected:
                if failures:
                    raise BenchError(f"PostgreSQL ceiling failed: {failures[0]!r}")
                if time.perf_counter() > deadline:
                    raise BenchError(f"PostgreSQL ceiling: {applied} of {self.expected} accumulated before the timeout")
                time.sleep(IDLE_POLL_SECONDS)
                claimed = self.batch_size
                while claimed == self.batch_size:  # a full batch: the task enqueues itself again at once
                    claimed = self._accumulate_once(connection)
                    applied += claimed
            return time.perf_counter()
        finally:
            connection.close()

    def _accumulate_once(self, connection: Any) -> int:
        now = datetime.now(UTC)
        claim = {"key": accumulate_lock_key(self.symbol), "symbol": self.symbol, "limit": self.batch_size, "now": now}
        with connection.cursor() as cursor:
            cursor.execute(CLAIM_AND_NET, claim)
            # locked, id, side, quantity, price, received_at, seq, net_quantity, last_price, hold_until
            rows = cursor.fetchall()
            if rows[0][7] is None:  # the symbol's first run creates its accumulator: claim again
                connection.rollback()
                cursor.execute(CREATE_ACCUMULATOR, (self.symbol,))
                connection.commit()
                cursor.execute(CLAIM_AND_NET, claim)
                rows = cursor.fetchall()
            claimed = [row for row in rows if row[1] is not None]
            net, hold_until = rows[0][7], rows[0][9]
            if abs(net) >= self.threshold and (hold_until is None or hold_until <= now):
                taken = self._execute(cursor, now)
                if taken:
                    cursor.execute(WRITE_NET_ONLY, {"of_symbol": self.symbol, "net": net - taken})
        connection.commit()
        self.runs += 1
        return len(claimed)

    def _execute(self, cursor: Any, now: datetime) -> Decimal:
        """The execution the net calls for; its signed quantity (0 when frozen or nothing to take)."""
        cursor.execute(OPEN_PORTIONS, {"symbol": self.symbol})
        rows = cursor.fetchall()
        if rows and rows[0][0] == "freeze":
            return ZERO
        portions = [Portion(source, ref, quantity) for source, ref, quantity, _part, _n in rows]
        plan = plan_execution(portions, self.threshold)
        if plan is None:
            return ZERO
        cursor.execute(CREATE_EXECUTION, create_execution_parameters(uuid.uuid4(), self.symbol, plan, now))
        self.executions += 1
        return plan.signed_quantity
