"""Claim, call, record: no broker call inside a transaction or under a row lock (SPEC 6), and
the claim's lease keeps two workers from calling for one execution at once."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2
from sqlalchemy import delete, select

from models.db import UnitOfWork
from models.domain.quantities import Side
from models.domain.trades import IncomingTrade
from models.tables import Execution
from models.tables_ops import AccountPause
from tasks.audit import audit_books
from tasks.execution import (
    Claim,
    ExecutionConfig,
    SubmitOutcome,
    SubmitResult,
    claim_execution,
    claimant,
    release_claims_of,
    submit_execution,
)
from tasks.ingestion import AccumulationConfig, accumulate_symbol, store_trades
from tasks.ports import BrokerOrder, OrderRequest, TemporaryError
from tasks.settlement import Access
from tests.support.fakes import FakeBrokerage

D = Decimal
NOW = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
EXECUTION = ExecutionConfig(D(1), rejection_backoff_seconds=30, freeze_after_rejections=3, claim_lease_seconds=60)


class HangingBrokerage(FakeBrokerage):
    """Holds every order POST until the test lets it go, and says when one is being held."""

    def __init__(self) -> None:
        super().__init__()
        self.in_call = threading.Event()
        self.release = threading.Event()
        self.entered = 0  # order POSTs that reached the far side, held or not

    def submit_order(self, request: OrderRequest) -> BrokerOrder:
        self.entered += 1
        self.in_call.set()
        assert self.release.wait(30), "the test never released the call"
        return super().submit_order(request)


def pending_execution(uow: UnitOfWork) -> Execution:
    store_trades(uow, [IncomingTrade("t1", "AAPL", Side.BUY, D("2.5"), D("100"), NOW)])
    [execution_id] = accumulate_symbol(uow, "AAPL", AccumulationConfig(D(1), 100, frozenset()), NOW).executions
    with uow:
        return uow.session.scalars(select(Execution).where(Execution.id == execution_id)).one()


def submit_in_thread(
    url: str, broker: FakeBrokerage, execution_id: object, outcome: list[SubmitOutcome]
) -> threading.Thread:
    """Worker w1 submitting the execution on a thread of its own; its outcome lands in ``outcome``."""

    def run() -> None:
        result = submit_execution(uow_for(url), lambda _a: broker, execution_id, EXECUTION, NOW, worker="w1")  # type: ignore[arg-type]
        outcome.append(result.outcome)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def lock_nowait(url: str, query: str, *args: object) -> int:
    """Lock rows the way a second worker would, failing at once if anyone holds them."""
    connection = psycopg2.connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = 0")
            cursor.execute(query, args)
            return len(cursor.fetchall())
    finally:
        connection.rollback()
        connection.close()


def test_rows_are_free_while_the_broker_call_hangs(uow: UnitOfWork, clean_database: str) -> None:
    execution = pending_execution(uow)
    broker = HangingBrokerage()
    outcome: list[SubmitOutcome] = []
    worker = submit_in_thread(clean_database, broker, execution.id, outcome)
    try:
        assert broker.in_call.wait(30), "the worker never reached the broker"
        # While the POST hangs, every row it touches can be locked by someone else at once.
        assert (
            lock_nowait(clean_database, "SELECT id FROM executions WHERE id = %s FOR UPDATE NOWAIT", str(execution.id))
            == 1
        )
        assert (
            lock_nowait(clean_database, "SELECT symbol FROM accumulators WHERE symbol = 'AAPL' FOR UPDATE NOWAIT") == 1
        )
        # ...and a second worker for the same execution backs off without calling the broker.
        second = submit_execution(uow_for(clean_database), lambda _a: broker, execution.id, EXECUTION, NOW, worker="w2")
        assert second.outcome is SubmitOutcome.BUSY
        claimed_by = lock_nowait(clean_database, "SELECT 1 FROM executions WHERE claimed_by LIKE 'w1 %%'")
        assert claimed_by == 1
    finally:
        broker.release.set()
        worker.join(30)
    assert outcome == [SubmitOutcome.SETTLED]
    assert broker.posts == {execution.client_order_id: 1}
    with uow:
        stored = uow.session.scalars(select(Execution).where(Execution.id == execution.id)).one()
        assert (stored.status, stored.claimed_by, stored.claimed_until, stored.submit_attempts) == (
            "filled",
            None,
            None,
            1,
        )
    assert audit_books(uow, D(1), NOW).ok


def test_a_call_that_outlives_its_lease_records_nothing_the_new_claimant_does(
    uow: UnitOfWork, clean_database: str
) -> None:
    execution = pending_execution(uow)
    broker = HangingBrokerage()
    outcome: list[SubmitOutcome] = []
    worker = submit_in_thread(clean_database, broker, execution.id, outcome)
    assert broker.in_call.wait(30)
    # w1 hangs past its lease (a dead worker looks the same): w2 takes over. Its lookup finds
    # nothing yet (w1's POST has not reached the book), so it places the order itself...
    later = NOW + timedelta(seconds=61)
    fast = FakeBrokerage()
    fast.orders = broker.orders  # one far side
    fast.posts = broker.posts
    assert (
        submit_execution(uow_for(clean_database), lambda _a: fast, execution.id, EXECUTION, later, worker="w2").outcome
        is SubmitOutcome.SETTLED
    )
    # ...and w1's late POST meets the duplicate id at the broker: read back, and not recorded.
    broker.release.set()
    worker.join(30)
    assert outcome == [SubmitOutcome.LEASE_LOST]
    assert len(broker.orders) == 1
    assert audit_books(uow, D(1), later).ok


def uow_for(url: str) -> UnitOfWork:
    return UnitOfWork(url)


def test_a_symbol_gets_its_limit_of_calls_and_its_other_executions_wait(uow: UnitOfWork, clean_database: str) -> None:
    store_trades(uow, [IncomingTrade(f"t{n}", "AAPL", Side.BUY, D("1.5"), D("100"), NOW) for n in range(2)])
    config = AccumulationConfig(D(1), 1, frozenset())  # one trade a run: two executions
    first = accumulate_symbol(uow, "AAPL", config, NOW).executions
    second = accumulate_symbol(uow, "AAPL", config, NOW).executions
    one_call = ExecutionConfig(D(1), 30, 3, calls_per_symbol=1)
    broker = HangingBrokerage()
    woken: list[list[uuid.UUID]] = []
    worker = threading.Thread(
        target=lambda: submit_execution(
            uow_for(clean_database), lambda _a: broker, first[0], one_call, NOW, worker="w1", wake=woken.append
        )
    )
    worker.start()
    try:
        assert broker.in_call.wait(30)
        waiting = submit_execution(
            uow_for(clean_database), lambda _a: broker, second[0], one_call, NOW, worker="w2", wake=woken.append
        )
        assert waiting.outcome is SubmitOutcome.SYMBOL_BUSY
        assert broker.entered == 1  # the second never reached the broker
        assert woken == []  # turned away: nothing sent for it, nor retried; it waits in its row
    finally:
        broker.release.set()
        worker.join(30)
    # The call that held the symbol's last slot ended: its release sends the one turned away.
    assert woken == [second]
    after = submit_execution(uow_for(clean_database), lambda _a: broker, second[0], one_call, NOW, worker="w2")
    assert after.outcome is SubmitOutcome.SETTLED


def test_only_the_claim_that_took_the_last_slot_wakes_and_it_wakes_up_to_the_limit(
    uow: UnitOfWork, clean_database: str
) -> None:
    """A symbol with two call slots: the first claim (a slot left over) wakes nobody; the second,
    which took the last slot, wakes the oldest of those turned away meanwhile after its release,
    however the broker answered, and no more than the symbol has slots. An execution whose
    message is still on its way (never turned away) gets no second one."""
    store_trades(uow, [IncomingTrade(f"t{n}", "AAPL", Side.BUY, D("1.5"), D("100"), NOW) for n in range(6)])
    config = AccumulationConfig(D(1), 1, frozenset())
    ids = [accumulate_symbol(uow, "AAPL", config, NOW).executions[0] for _ in range(6)]
    two_calls = ExecutionConfig(D(1), 30, 3, calls_per_symbol=2, claim_lease_seconds=60)
    brokers = {"w1": HangingBrokerage(), "w2": HangingBrokerage()}
    brokers["w2"].timeout_after_accept = 1  # w2's answer says nothing: a release all the same
    woken: dict[str, list[list[uuid.UUID]]] = {"w1": [], "w2": []}
    said_nothing: list[str] = []

    def submit(worker: str, execution_id: object) -> None:
        try:
            submit_execution(
                uow_for(clean_database), lambda _a: brokers[worker], execution_id, two_calls, NOW, worker=worker,  # type: ignore[arg-type]
                wake=woken[worker].append,
            )  # fmt: skip
        except TemporaryError:
            said_nothing.append(worker)

    threads = [
        threading.Thread(target=submit, args=(worker, execution_id)) for worker, execution_id in (("w1", ids[0]),)
    ]
    threads[0].start()
    wait_for_entered(brokers["w1"], 1)  # w1 claimed with a slot left over
    threads.append(threading.Thread(target=submit, args=("w2", ids[1])))
    threads[1].start()
    wait_for_entered(brokers["w2"], 1)  # w2 took the symbol's last slot
    for execution_id in ids[2:5]:
        turned_away = submit_execution(
            uow_for(clean_database), lambda _a: brokers["w1"], execution_id, two_calls, NOW, worker="w3"
        )
        assert turned_away.outcome is SubmitOutcome.SYMBOL_BUSY
    for worker, thread in zip(brokers, threads, strict=True):
        brokers[worker].release.set()
        thread.join(30)
    assert said_nothing == ["w2"]
    assert woken["w1"] == [] and woken["w2"] == [[ids[2], ids[3]]]  # ids[5]'s message is on its way
    # Woken, no longer marked; the one past the limit still is, for the next release to wake.
    with uow:
        marked = uow.session.scalars(select(Execution.id).where(Execution.waiting_since.is_not(None))).all()
    assert marked == [ids[4]]


def wait_for_entered(broker: HangingBrokerage, calls: int) -> None:
    import time

    for _ in range(200):
        if broker.entered >= calls:
            return
        time.sleep(0.01)
    raise AssertionError(f"{calls} calls never reached the broker")


def test_the_heartbeat_keeps_a_long_call_claimed(uow: UnitOfWork, clean_database: str) -> None:
    execution = pending_execution(uow)
    broker = HangingBrokerage()
    clock = [NOW]
    short = ExecutionConfig(D(1), 30, 3, claim_lease_seconds=1)
    worker = threading.Thread(
        target=lambda: submit_execution(
            uow_for(clean_database), lambda _a: broker, execution.id, short, NOW, worker="w1", clock=lambda: clock[0]
        )
    )
    worker.start()
    try:
        assert broker.in_call.wait(30)
        clock[0] = NOW + timedelta(seconds=100)  # time passes; the live worker renews its lease
        wait_until_claimed_past(clean_database, clock[0])
        late = submit_execution(uow_for(clean_database), lambda _a: broker, execution.id, short, clock[0], worker="w2")
        assert late.outcome is SubmitOutcome.BUSY
    finally:
        broker.release.set()
        worker.join(30)
    assert broker.posts == {execution.client_order_id: 1}


def wait_until_claimed_past(url: str, moment: datetime) -> None:
    import time

    for _ in range(100):
        if lock_nowait(url, "SELECT 1 FROM executions WHERE claimed_until > %s", moment):
            return
        time.sleep(0.05)
    raise AssertionError("the heartbeat never renewed the claim")


def test_a_claim_that_sees_executions_of_its_symbol_waiting_a_while_wakes_them(
    uow: UnitOfWork, clean_database: str
) -> None:
    """Executions left unclaimed with no message (beyond what a dead node's rescue re-sent) are
    woken by the release of the next claim of their symbol, even with call slots to spare."""
    store_trades(uow, [IncomingTrade(f"t{n}", "AAPL", Side.BUY, D("1.5"), D("100"), NOW) for n in range(3)])
    config = AccumulationConfig(D(1), 1, frozenset())
    left = [accumulate_symbol(uow, "AAPL", config, NOW).executions[0] for _ in range(2)]
    fresh = accumulate_symbol(uow, "AAPL", config, NOW + timedelta(seconds=5)).executions[0]
    woken: list[list[uuid.UUID]] = []
    later = NOW + timedelta(seconds=5)
    ten_slots = ExecutionConfig(D(1), 30, 3, calls_per_symbol=10)
    result = submit_execution(uow, lambda _a: FakeBrokerage(), fresh, ten_slots, later, worker="w1", wake=woken.append)
    assert result.outcome is SubmitOutcome.SETTLED
    assert woken == [left[:10]]
    # Woken: their wait starts again, so the next claim of the symbol does not send them twice.
    store_trades(uow, [IncomingTrade("t3", "AAPL", Side.BUY, D("1.5"), D("100"), later)])
    next_one = accumulate_symbol(uow, "AAPL", config, later + timedelta(seconds=0.5)).executions[0]
    submit_execution(
        uow, lambda _a: FakeBrokerage(), next_one, ten_slots, later + timedelta(seconds=0.5), worker="w1",
        wake=woken.append,
    )  # fmt: skip
    assert woken == [left[:10]]
    # Young ones (their messages are on their way) wake nobody: no extra round trip, no extra message.
    store_trades(uow, [IncomingTrade("t9", "MSFT", Side.BUY, D("1.5"), D("100"), later)])
    queued = [accumulate_symbol(uow, "MSFT", config, later).executions[0]]
    store_trades(uow, [IncomingTrade("t10", "MSFT", Side.BUY, D("1.5"), D("100"), later)])
    young = accumulate_symbol(uow, "MSFT", config, later).executions[0]
    submit_execution(uow, lambda _a: FakeBrokerage(), young, ten_slots, later, worker="w1", wake=woken.append)
    assert woken == [left[:10]] and queued


def test_a_backlog_is_not_woken_twice(uow: UnitOfWork) -> None:
    """Executions queued behind a backlog for seconds wait unclaimed, but their messages are on
    their way: the claim of an older one (its message came first) wakes none of them, even with
    the symbol's last slot taken. An older one left unclaimed behind a younger one's claim has
    lost its message: that one is woken."""
    config = AccumulationConfig(D(1), 1, frozenset())
    store_trades(uow, [IncomingTrade(f"t{n}", "AAPL", Side.BUY, D("1.5"), D("100"), NOW) for n in range(4)])
    backlog = [
        accumulate_symbol(uow, "AAPL", config, NOW + timedelta(milliseconds=100 * n)).executions[0] for n in range(4)
    ]
    one_slot = ExecutionConfig(D(1), 30, 3, calls_per_symbol=1)  # every claim takes the last slot
    later = NOW + timedelta(seconds=5)
    woken: list[list[uuid.UUID]] = []
    submit_execution(uow, lambda _a: FakeBrokerage(), backlog[1], one_slot, later, worker="w1", wake=woken.append)
    assert woken == [[backlog[0]]]  # made before backlog[1], its message was taken first
    woken.clear()
    submit_execution(uow, lambda _a: FakeBrokerage(), backlog[0], one_slot, later, worker="w1", wake=woken.append)
    assert woken == [[]]  # backlog[2] and [3] were made after it: their messages are queued


def test_executions_a_rescue_left_waiting_are_woken_by_the_next_claim_of_their_symbol(uow: UnitOfWork) -> None:
    """A dead node's rescue sends the oldest of a symbol and marks the rest (tasks.sweeps): the
    claim of one sent wakes them on its release, with call slots to spare and however young."""
    from tasks.sweeps import find_orphaned_executions

    config = AccumulationConfig(D(1), 1, frozenset())
    store_trades(uow, [IncomingTrade(f"t{n}", "AAPL", Side.BUY, D("1.5"), D("100"), NOW) for n in range(4)])
    left = [accumulate_symbol(uow, "AAPL", config, NOW).executions[0] for _ in range(4)]
    later = NOW + timedelta(seconds=1)
    sent = find_orphaned_executions(uow, later, died_at=later, per_symbol=1)
    assert sent == [left[0]]
    woken: list[list[uuid.UUID]] = []
    ten_slots = ExecutionConfig(D(1), 30, 3, calls_per_symbol=10)
    submit_execution(uow, lambda _a: FakeBrokerage(), left[0], ten_slots, later, worker="w1", wake=woken.append)
    assert woken == [left[1:]]
    with uow:
        assert uow.session.scalar(select(Execution.id).where(Execution.waiting_since.is_not(None))) is None


def test_a_claim_off_the_usual_path_takes_the_lease_once(uow: UnitOfWork) -> None:
    """The usual claim takes its lease in the statement that reads the context; a paused account
    (its probe due) takes it in a statement of its own after the checks: once either way."""
    execution = pending_execution(uow)
    with uow:
        uow.session.add(AccountPause(account=execution.account, reason="refused", paused_at=NOW, probe_after=NOW))
        uow.commit()
    claim = claim_execution(uow, execution.id, EXECUTION, NOW, "w1")
    assert isinstance(claim, Claim) and claim.access is Access.PROBE and claim.first
    # Claimed already: neither path takes it again, on the usual path or off it.
    assert claim_execution(uow, execution.id, EXECUTION, NOW, "w2") == SubmitResult(SubmitOutcome.BUSY)
    with uow:
        uow.session.execute(delete(AccountPause))
        uow.commit()
    assert claim_execution(uow, execution.id, EXECUTION, NOW, "w2") == SubmitResult(SubmitOutcome.BUSY)
    with uow:
        row = uow.session.scalars(select(Execution).where(Execution.id == execution.id)).one()
        assert (row.claims, row.claimed_by) == (1, claim.token)
    # The lease lapsed: the usual path takes it, and counts the second claim.
    later = claim_execution(uow, execution.id, EXECUTION, NOW + timedelta(seconds=61), "w2")
    assert isinstance(later, Claim) and later.access is Access.OPEN and not later.first


def test_the_claims_of_a_dead_node_are_released_and_only_its_own(uow: UnitOfWork) -> None:
    store_trades(uow, [IncomingTrade(f"t{s}", s, Side.BUY, D("1"), D("100"), NOW) for s in ("AAPL", "MSFT")])
    config = AccumulationConfig(D(1), 100, frozenset())
    [dead] = accumulate_symbol(uow, "AAPL", config, NOW).executions
    [alive] = accumulate_symbol(uow, "MSFT", config, NOW).executions
    # Two nodes whose names share a prefix: only the dead one's claims go.
    assert isinstance(claim_execution(uow, dead, EXECUTION, NOW, claimant("io-w", 12)), Claim)
    assert isinstance(claim_execution(uow, alive, EXECUTION, NOW, claimant("io-w", 123)), Claim)
    assert release_claims_of(uow, claimant("io-w", 12), NOW) == 1
    assert release_claims_of(uow, claimant("io-w", 12), NOW) == 0  # once
    # Long before the lease would lapse, another worker claims the dead node's execution (and,
    # not its first claim, looks the order up before anything is sent); the live one stays held.
    taken = claim_execution(uow, dead, EXECUTION, NOW, "w2")
    assert isinstance(taken, Claim) and not taken.first
    assert claim_execution(uow, alive, EXECUTION, NOW, "w2") == SubmitResult(SubmitOutcome.BUSY)
