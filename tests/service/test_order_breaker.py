"""The per-symbol order breaker (issue 12: a sick symbol stays sick alone), on real PostgreSQL
with a fake far side: calls whose answer said nothing open it, a cooling symbol is not claimed,
one probe decides, and no order is ever sent twice or assumed."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import event, select

from models.db import UnitOfWork, engine_for
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Execution
from models.tables_ops import OrderCallHealth
from tasks.audit import audit_books
from tasks.execution import Claim, ExecutionConfig, SubmitOutcome, claim_execution, submit_execution
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.order_breaker import BreakerConfig, BreakerRole
from tasks.ports import BrokerOrder, OrderRequest, TemporaryError
from tests.service.test_execution_claims import HangingBrokerage
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
LEASE = 5
CONFIG = ExecutionConfig(D(1), 30, 3, claim_lease_seconds=LEASE, breaker=BreakerConfig(3, 10, 300))
AFTER_COOLDOWN = NOW + timedelta(seconds=11)


class SilentBroker(FakeBrokerage):
    """Says nothing (a read timeout) to every call about the client order ids in ``silent``."""

    def __init__(self) -> None:
        super().__init__()
        self.silent: set[str] = set()
        self.calls = 0

    def get_order_by_client_order_id(self, client_order_id: str) -> BrokerOrder | None:
        self.calls += 1
        if client_order_id in self.silent:
            raise TemporaryError("GET /v2/orders:by_client_order_id: ReadTimeout")
        return super().get_order_by_client_order_id(client_order_id)

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        self.calls += 1
        if request.client_order_id in self.silent:
            raise TemporaryError("POST /v2/orders: ReadTimeout")
        return super().submit_order(request)


def executions(uow: UnitOfWork, symbol: str, n: int) -> list[Execution]:
    """``n`` pending one-share buys of ``symbol``."""
    store_trades(uow, [IncomingTrade(f"{symbol}-{k}", symbol, Side.BUY, D(1), D(100), NOW) for k in range(n)])
    one_a_run = AccumulationConfig(D(1), 1, frozenset())
    ids = [i for _ in range(n) for i in accumulate_symbol(uow, symbol, one_a_run, NOW).executions]
    with uow:
        return list(uow.session.scalars(select(Execution).where(Execution.id.in_(ids)).order_by(Execution.seq)))


def submit(uow: UnitOfWork, broker: FakeBrokerage, execution: Execution, now: datetime = NOW) -> SubmitOutcome:
    return submit_execution(uow, lambda _a: broker, execution.id, CONFIG, now).outcome


def say_nothing(uow: UnitOfWork, broker: SilentBroker, sick: list[Execution], now: datetime = NOW) -> None:
    for execution in sick:
        broker.silent.add(execution.client_order_id)
        with pytest.raises(TemporaryError):
            submit(uow, broker, execution, now)


def health(uow: UnitOfWork, symbol: str) -> OrderCallHealth | None:
    with uow:
        return uow.session.get(OrderCallHealth, symbol)


def open_breaker(uow: UnitOfWork, broker: SilentBroker, symbol: str = "SICK", waiting: int = 2) -> list[Execution]:
    """Three silent calls open the symbol's breaker; returns ``waiting`` more pending executions."""
    sick = executions(uow, symbol, 3 + waiting)
    say_nothing(uow, broker, sick[:3])
    return sick[3:]


def test_unknown_outcomes_in_a_row_open_the_breaker_and_a_cooling_symbol_calls_nobody(
    uow: UnitOfWork, caplog: pytest.LogCaptureFixture
) -> None:
    broker = SilentBroker()
    with caplog.at_level(logging.WARNING, logger="tasks.order_breaker"):
        waiting = open_breaker(uow, broker)
    opened = health(uow, "SICK")
    assert opened is not None
    assert (opened.state, opened.consecutive_failures, opened.opens) == ("open", 3, 1)
    assert opened.cooldown_until == NOW + timedelta(seconds=10)
    [line] = [r.getMessage() for r in caplog.records]
    assert "orders of SICK: 3 broker answers in a row said nothing" in line and "for 10 s" in line

    calls = broker.calls
    result = submit_execution(uow, lambda _a: broker, waiting[0].id, CONFIG, NOW + timedelta(seconds=4))
    assert (result.outcome, result.wait_seconds) == (SubmitOutcome.SYMBOL_COOLING, 6)
    assert broker.calls == calls  # not even a lookup
    with uow:
        row = uow.session.get(Execution, waiting[0].id)
        assert row is not None and (row.status, row.claimed_by) == ("pending", None)


def test_two_silent_calls_do_not_open_it(uow: UnitOfWork) -> None:
    broker = SilentBroker()
    sick = executions(uow, "SICK", 3)
    say_nothing(uow, broker, sick[:2])
    counted = health(uow, "SICK")
    assert counted is not None and (counted.state, counted.consecutive_failures) == ("closed", 2)
    assert submit(uow, broker, sick[2]) is SubmitOutcome.SETTLED


def test_a_healthy_symbol_is_not_held_by_a_sick_one(uow: UnitOfWork) -> None:
    broker = SilentBroker()
    [waiting, *_] = open_breaker(uow, broker, "SICK")
    [healthy] = executions(uow, "WELL", 1)
    assert submit(uow, broker, waiting) is SubmitOutcome.SYMBOL_COOLING
    assert submit(uow, broker, healthy) is SubmitOutcome.SETTLED
    assert health(uow, "WELL") is None  # a healthy symbol never writes a row


@pytest.mark.parametrize("answer", ["refused", "filled"])
def test_an_answer_resets_the_count(uow: UnitOfWork, answer: str) -> None:
    broker = SilentBroker()
    sick = executions(uow, "SICK", 5)
    say_nothing(uow, broker, sick[:2])
    if answer == "refused":
        broker.refuse_symbols.add("SICK")  # the broker's word on the order: an answer
    assert submit(uow, broker, sick[2]) is SubmitOutcome.SETTLED
    reset = health(uow, "SICK")
    assert reset is not None and (reset.state, reset.consecutive_failures) == ("closed", 0)
    say_nothing(uow, broker, sick[3:5])
    counted = health(uow, "SICK")
    assert counted is not None and (counted.state, counted.consecutive_failures) == ("closed", 2)


def test_after_the_cooldown_one_probe_goes_out_and_its_answer_closes_the_breaker(
    uow: UnitOfWork, caplog: pytest.LogCaptureFixture
) -> None:
    broker = SilentBroker()
    [probe, after] = open_breaker(uow, broker)
    with caplog.at_level(logging.INFO, logger="tasks.order_breaker"):
        assert submit(uow, broker, probe, AFTER_COOLDOWN) is SubmitOutcome.SETTLED
    closed = health(uow, "SICK")
    assert closed is not None
    assert (closed.state, closed.consecutive_failures, closed.opens, closed.probe_token) == ("closed", 0, 0, None)
    assert any("breaker closed" in r.getMessage() for r in caplog.records)
    assert submit(uow, broker, after, AFTER_COOLDOWN) is SubmitOutcome.SETTLED


def test_a_probe_that_says_nothing_reopens_the_breaker_for_longer(uow: UnitOfWork) -> None:
    broker = SilentBroker()
    [probe, after] = open_breaker(uow, broker)
    say_nothing(uow, broker, [probe], AFTER_COOLDOWN)
    reopened = health(uow, "SICK")
    assert reopened is not None
    assert (reopened.state, reopened.opens, reopened.probe_token) == ("open", 2, None)
    assert reopened.cooldown_until == AFTER_COOLDOWN + timedelta(seconds=20)  # doubled
    assert submit(uow, broker, after, AFTER_COOLDOWN + timedelta(seconds=19)) is SubmitOutcome.SYMBOL_COOLING


def test_two_workers_racing_after_the_cooldown_one_gets_the_probe(uow: UnitOfWork, clean_database: str) -> None:
    broker = SilentBroker()
    waiting = open_breaker(uow, broker)
    start = threading.Barrier(2)
    results: dict[str, Claim | object] = {}

    def claim(worker: str, execution: Execution) -> None:
        start.wait(10)
        results[worker] = claim_execution(UnitOfWork(clean_database), execution.id, CONFIG, AFTER_COOLDOWN, worker)

    threads = [threading.Thread(target=claim, args=(f"w{n}", e)) for n, e in enumerate(waiting)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    probes = [r for r in results.values() if isinstance(r, Claim)]
    assert len(probes) == 1 and probes[0].breaker is BreakerRole.PROBE
    [cooling] = [r for r in results.values() if not isinstance(r, Claim)]
    assert cooling.outcome is SubmitOutcome.SYMBOL_COOLING  # type: ignore[attr-defined]
    probing = health(uow, "SICK")
    assert probing is not None and (probing.state, probing.probe_token) == ("half_open", probes[0].token)


def test_while_the_probe_call_hangs_the_symbols_other_executions_wait(uow: UnitOfWork, clean_database: str) -> None:
    silent = SilentBroker()
    [probe, other] = open_breaker(uow, silent)
    hanging = HangingBrokerage()
    worker = threading.Thread(target=lambda: submit(UnitOfWork(clean_database), hanging, probe, AFTER_COOLDOWN))
    worker.start()
    try:
        assert hanging.in_call.wait(30)
        waiting = submit_execution(UnitOfWork(clean_database), lambda _a: hanging, other.id, CONFIG, AFTER_COOLDOWN)
        assert (waiting.outcome, waiting.wait_seconds) == (SubmitOutcome.SYMBOL_COOLING, LEASE)
        assert hanging.entered == 1
    finally:
        hanging.release.set()
        worker.join(30)
    closed = health(uow, "SICK")
    assert closed is not None and closed.state == "closed"
    assert submit(uow, hanging, other, AFTER_COOLDOWN) is SubmitOutcome.SETTLED


def test_a_probe_whose_worker_died_is_taken_over_when_its_lease_lapses(uow: UnitOfWork) -> None:
    broker = SilentBroker()
    [first, second] = open_breaker(uow, broker)
    dead = claim_execution(uow, first.id, CONFIG, AFTER_COOLDOWN, "w1")  # claimed, then never recorded
    assert isinstance(dead, Claim) and dead.breaker is BreakerRole.PROBE
    assert submit(uow, broker, second, AFTER_COOLDOWN + timedelta(seconds=LEASE - 1)) is SubmitOutcome.SYMBOL_COOLING
    lapsed = AFTER_COOLDOWN + timedelta(seconds=LEASE + 1)
    assert submit(uow, broker, second, lapsed) is SubmitOutcome.SETTLED  # the new probe
    assert health(uow, "SICK").state == "closed"  # type: ignore[union-attr]
    assert submit(uow, broker, first, lapsed) is SubmitOutcome.SETTLED  # and the dead worker's execution


def test_orders_accepted_behind_timeouts_are_looked_up_by_the_probe_never_resent(uow: UnitOfWork) -> None:
    broker = SilentBroker()
    sick = executions(uow, "SICK", 3)
    broker.timeout_after_accept = 3  # each POST reaches the book, its answer is lost
    for execution in sick:
        with pytest.raises(TemporaryError):
            submit(uow, broker, execution)
    assert health(uow, "SICK").state == "open"  # type: ignore[union-attr]
    assert [submit(uow, broker, e, AFTER_COOLDOWN) for e in sick] == [SubmitOutcome.SETTLED] * 3
    assert broker.posts == {e.client_order_id: 1 for e in sick}
    assert audit_books(uow, D(1), AFTER_COOLDOWN).ok


def test_the_claim_of_a_healthy_symbol_takes_two_statements(uow: UnitOfWork, clean_database: str) -> None:
    [execution] = executions(uow, "WELL", 1)
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    engine = engine_for(clean_database)
    event.listen(engine, "before_cursor_execute", count)
    try:
        claim = claim_execution(uow, execution.id, CONFIG, NOW, "w1")
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert isinstance(claim, Claim) and claim.breaker is BreakerRole.QUIET
    # Find and lock; live claims + freeze + pause + breaker and the lease (then the commit).
    assert len(statements) == 2, statements
