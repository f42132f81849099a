"""Execution: send an execution's whole-share order to the brokerage exactly once (SPEC 1.2).

Claim, call, record (SPEC 6: no broker call inside a database transaction or under a row lock):

1. claim: a short transaction takes the execution's lease (``claimed_by``, ``claimed_until``),
   checks freezes and account pauses, and commits;
2. call: with no transaction open, the balance gate for buys, the lookup by ``client_order_id``
   and, only if the broker has no order under it, the POST (then the replacement chain);
3. record: a new transaction locks the row, makes sure the claim is still this worker's, and
   writes what the broker said (``tasks.settlement``).

The order is always looked up by its ``client_order_id`` before anything is sent, so a
redelivered task, a timeout or a crash after the broker accepted never leads to a second
order; the lease keeps two workers from calling for one execution at once, and a worker that
outlived its lease records nothing (the one that took over does). Outcomes are read by
evidence (SPEC 4): an answer that says nothing leaves the execution in flight and is retried;
a refusal settles it only after one more lookup found no order; a ``replaced`` order is
followed to its replacement; an account the broker refuses as a whole is paused.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    Select,
    SQLColumnExpression,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.execution_state import ExecutionStatus, settle
from models.domain.positions import apply_fill
from models.domain.quantities import Side, signed
from models.tables import Execution, Position, SymbolFreeze
from models.tables_ops import AccountPause, Balance, OrderCallHealth
from tasks.balances import BalanceUnknown, Sleep, ensure_known_balance
from tasks.lineage import first_received_of
from tasks.order_breaker import BreakerRole, gate, health_columns, note_call, take_probe, with_health
from tasks.ports import (
    AccountRefused,
    Brokerage,
    BrokerageMisconfigured,
    BrokerOrder,
    DuplicateClientOrderId,
    InvalidOrder,
    OrderRequest,
    TemporaryError,
    UnresolvedOrder,
)
from tasks.positions import lock_holding, unbooked_fill
from tasks.settlement import (
    Access,
    ExecutionConfig,
    ReadAlong,
    SubmitOutcome,
    SubmitResult,
    account_access,
    backoff_of,
    lift_pause,
    log_broker_order,
    note_unknown_outcome,
    pause_account,
    record_broker_order,
    settle_refused,
)

log = logging.getLogger(__name__)
IN_FLIGHT = (ExecutionStatus.PENDING.value, ExecutionStatus.SUBMITTED.value)
# An execution in flight that nobody claimed for this long is waiting for a wake, not for its
# queued message (which a healthy fleet delivers within milliseconds).
WAITING_AFTER_SECONDS = 1
UNKNOWN = (TemporaryError, BrokerageMisconfigured)  # answers that say nothing about the order


@dataclass(frozen=True)
class Claim:
    """An execution this worker may call the broker for until ``until``; what the call needs."""

    execution_id: uuid.UUID
    token: str  # claimed_by: the worker's name and a nonce, so a claim is never mistaken for another
    until: datetime
    symbol: str
    side: str
    quantity: Decimal
    account: str
    client_order_id: str
    access: Access  # OPEN, or PROBE: the one probe of a paused account
    breaker: BreakerRole  # what the symbol's order breaker saw: QUIET, COUNTING, or PROBE
    first: bool = False  # the execution's first claim ever: no request can have reached the broker
    # The claim read a balance of the account younger than its max age: a buy's gate is passed
    # without another read (SPEC 1.5; the claim is microseconds before the call).
    balance_fresh: bool = False
    # The claim took the symbol's last free call slot (executions of the symbol claimed meanwhile
    # are turned away, SYMBOL_BUSY, and wait unqueued), or saw some of the symbol's executions
    # waiting unclaimed for a while: its release wakes them (``_waiting``).
    last_slot: bool = False
    # When the execution was made: a message for it was sent then, so one sent for any execution
    # of the symbol before that has been taken off the queue (``_waiting``).
    made_at: datetime | None = None


@dataclass
class _Call:
    """What the broker said, or why it said nothing; filled in with no transaction open."""

    order: BrokerOrder | None = None
    posted: bool = False  # a POST went out (counted in submit_attempts)
    error: Exception | None = None


def submit_execution(
    uow: UnitOfWork,
    brokerages: Callable[[str], Brokerage],
    execution_id: uuid.UUID,
    config: ExecutionConfig,
    now: datetime,
    sleep: Sleep = time.sleep,
    worker: str = "worker",
    clock: Callable[[], datetime] | None = None,
    wake: Callable[[list[uuid.UUID]], None] | None = None,
) -> SubmitResult:
    """``brokerages`` gives the adapter of the execution's account; ``sleep`` waits between
    balance fetches; ``worker`` names the claimant; ``clock`` stamps the record (``now`` if None);
    ``wake`` sends a message for each execution a freed call slot of the symbol lets go
    (``_waiting``), after the record's commit, whatever the broker said.

    Raises ``TemporaryError`` or ``BrokerageMisconfigured`` when the broker's answer said nothing
    about the order: the execution stays in flight (noted on the row) and the caller retries."""
    claim = claim_execution(uow, execution_id, config, now, worker)
    if isinstance(claim, SubmitResult):
        return claim
    with _Heartbeat(uow.another(), claim, config, clock):
        call = _call_broker(uow, brokerages(claim.account), claim, config, now, sleep)
    recorded_at = clock() if clock else now
    result = _record(uow, claim, call, config, recorded_at)
    if wake is not None and claim.last_slot and result.outcome is not SubmitOutcome.LEASE_LOST:
        wake(_waiting(uow, claim, config, recorded_at))
    if isinstance(call.error, UNKNOWN) and result.outcome is not SubmitOutcome.LEASE_LOST:
        raise call.error
    return result


def claim_execution(
    uow: UnitOfWork, execution_id: uuid.UUID, config: ExecutionConfig, now: datetime, worker: str
) -> Claim | SubmitResult:
    """The short transaction before any broker call: take the lease, or say why not.

    Two statements on the usual path: find the execution and take its symbol's claim lock; then,
    under that lock, read the symbol's live claims, freeze, account pause and order breaker
    (``tasks.order_breaker``), and take the lease when none of them stands in the way, in one go
    (the lease is a statement of its own otherwise). At most ``config.calls_per_symbol``
    claims of one symbol are live at once, so a symbol whose calls hang holds that many threads
    of the execution pool and no more (``SYMBOL_BUSY``); a symbol whose calls keep saying
    nothing is not claimed at all while its breaker cools down (``SYMBOL_COOLING``)."""
    until = now + timedelta(seconds=config.claim_lease_seconds)
    token = f"{worker} {uuid.uuid4().hex[:12]}"
    with uow:
        session = uow.session
        # Built once, run on the session's connection: none of them needs the ORM.
        connection = session.connection()
        found = connection.execute(_FIND_AND_LOCK, {"execution_id": execution_id}).one_or_none()
        if found is None:
            return SubmitResult(SubmitOutcome.MISSING)
        # A statement of its own, after the lock: its snapshot sees every claim committed before.
        # On the usual path (breaker closed, a call slot free, not frozen, not paused) it takes
        # the lease too; otherwise it only reads, and the checks below decide.
        seen = connection.execute(
            _CONTEXT_AND_LEASE,
            {
                "of_symbol": found.symbol,
                "of_account": found.account,
                "made_at": found.created_at,
                "execution_id": execution_id,
                "now": now,
                "fresh_after": now - config.balances.max_age,
                "limit": config.calls_per_symbol,
                "token": token,
                "until": until,
            },
        ).one()
        breaker = gate(seen, config.breaker, config.claim_lease_seconds, now)
        if breaker.role is None:
            return SubmitResult(SubmitOutcome.SYMBOL_COOLING, wait_seconds=breaker.wait_seconds)
        if seen.live >= config.calls_per_symbol:
            # Marked as turned away: the release of the symbol's last slot wakes it (``_waiting``).
            connection.execute(_TURN_AWAY, {"execution_id": execution_id, "now": now})
            uow.commit()
            return SubmitResult(SubmitOutcome.SYMBOL_BUSY)
        # Not taken on the usual path: something stood in the way (then the checks below say
        # what), or the execution is claimed or settled (then this finds so again).
        row = seen if seen.claims is not None else _take_lease(connection, execution_id, now, token, until)
        if row is None:
            status = session.scalar(select(Execution.status).where(Execution.id == execution_id))
            return SubmitResult(SubmitOutcome.BUSY if status in IN_FLIGHT else SubmitOutcome.SETTLED)
        # Leaving without a commit rolls the claim back (and a probe taken): nothing is asked of the broker.
        if seen.frozen:
            return SubmitResult(SubmitOutcome.FROZEN)
        access = account_access(session, row.account, config, now) if seen.paused else Access.OPEN
        if access is Access.PAUSED:
            return SubmitResult(SubmitOutcome.ACCOUNT_PAUSED)
        if breaker.wants_probe and not take_probe(session, row.symbol, token, now):
            return SubmitResult(SubmitOutcome.SYMBOL_COOLING, wait_seconds=config.claim_lease_seconds)
        uow.commit()
    return Claim(
        execution_id,
        token,
        until,
        row.symbol,
        row.side,
        row.quantity,
        row.account,
        row.client_order_id,
        access,
        breaker.role,
        first=row.claims == 1,
        balance_fresh=seen.balance_fresh,
        last_slot=seen.live + 1 >= config.calls_per_symbol or seen.stale_waiting,
        made_at=found.created_at,
    )


def claimant(node: str, pid: int) -> str:
    """Who claims: a worker process, by its Celery node name and pid (``Claim.token`` adds a nonce)."""
    return f"{node}:{pid}"


def release_claims_of(uow: UnitOfWork, worker: str, now: datetime) -> int:
    """Let go at once of the live claims of ``worker`` (``claimant``), a process known dead: its
    process keeper saw it exit. Nothing it started can record any more (its lease ends with it,
    and its heartbeat died with it), so the claims need not run out their lease: whoever claims
    next looks the order up by its ``client_order_id`` first, as after a lapsed lease. How many."""
    with uow:
        released = uow.session.execute(
            update(Execution)
            .where(
                Execution.status.in_(IN_FLIGHT),
                Execution.claimed_until > now,
                func.left(Execution.claimed_by, len(worker) + 1) == f"{worker} ",
            )
            .values(claimed_until=now)
            .returning(Execution.id)
        ).all()
        uow.commit()
    return len(released)


def _take_lease(connection: Any, execution_id: uuid.UUID, now: datetime, token: str, until: datetime) -> Any:
    return connection.execute(
        _TAKE_LEASE, {"execution_id": execution_id, "now": now, "token": token, "until": until}
    ).one_or_none()


def _waiting(uow: UnitOfWork, claim: Claim, config: ExecutionConfig, now: datetime) -> list[uuid.UUID]:
    """After the release of a claim that took its symbol's last call slot, or saw executions of
    its symbol left waiting: the oldest of those that have no message on its way, as many as the
    symbol has slots, marked as woken (their wait starts again) in the statement that picks them.

    Two kinds wait with no message:
    - Marked (``waiting_since``): turned away (``SYMBOL_BUSY``: the symbol had its limit of calls
      under way; its message is done, and it is not retried), or beyond what a dead node's rescue
      re-sent (``tasks.sweeps.find_orphaned_executions``). Whichever live claim of the symbol was
      taken last saw every other one live, so it took the last slot and wakes the turned-away on
      its release. The turn-away commits under the symbol's claim lock, and this read comes after
      taking that lock, so it sees every execution turned away by the claims it saw. Any claim
      that sees a marked execution of its symbol wakes it too (``stale_waiting``).
    - Left (its message lost with a dead node, no rescue having marked it): unclaimed for over
      ``WAITING_AFTER_SECONDS`` since its last message, which was sent before the claimed
      execution was made. The queue hands messages out in order, so that message has been taken
      off it, and yet nothing claimed the execution.
    An execution whose message is still queued behind a backlog is neither, so a backlog is not
    sent twice (each claim waking the same oldest executions again fed the backlog it came from).
    A release the worker never reaches (killed) leaves them to the sweep of stale pending
    executions and to the rescue of a dead pool."""
    try:
        with uow:
            connection = uow.session.connection()
            connection.execute(_LOCK_SYMBOL, {"of_symbol": claim.symbol})
            woken = list(
                connection.scalars(
                    _WAKE_WAITING,
                    {
                        "of_symbol": claim.symbol,
                        "execution_id": claim.execution_id,
                        "limit": config.calls_per_symbol,
                        "now": now,
                        "left_before": min(now - timedelta(seconds=WAITING_AFTER_SECONDS), claim.made_at or now),
                    },
                )
            )
            uow.commit()
            return woken
    except Exception as exc:  # the order is recorded; the waiting ones are the sweep's
        log.warning("executions of %s waiting for a call slot not woken (the sweep sends them): %s", claim.symbol, exc)
        return []


def _claim_context(
    symbol: ColumnElement[str],
    account: ColumnElement[str],
    execution_id: ColumnElement[uuid.UUID],
    now: ColumnElement[datetime],
    fresh_after: ColumnElement[datetime],
    made_at: ColumnElement[datetime],
) -> Select[Any]:
    live = select(func.count()).where(
        Execution.symbol == symbol, Execution.claimed_until > now, Execution.id != execution_id
    )
    # Executions of the symbol in flight, claimed by nobody, with no message on its way: marked
    # waiting (turned away, or beyond what a dead node's rescue re-sent: tasks.sweeps), or
    # untouched for a while though their last message went out before this execution was made
    # (so it has left the queue, and nobody claimed them).
    stale_waiting = exists().where(
        Execution.symbol == symbol,
        Execution.status.in_(IN_FLIGHT),
        Execution.claimed_by.is_(None),
        Execution.id != execution_id,
        or_(
            Execution.waiting_since.is_not(None),
            and_(
                Execution.updated_at < now - timedelta(seconds=WAITING_AFTER_SECONDS),
                Execution.updated_at < made_at,
            ),
        ),
    )
    return with_health(
        select(
            live.scalar_subquery().label("live"),
            stale_waiting.label("stale_waiting"),
            exists().where(SymbolFreeze.symbol == symbol).label("frozen"),
            exists().where(AccountPause.account == account).label("paused"),
            exists()
            .where(
                Balance.account == account,
                Balance.fetched_at >= fresh_after,
                Balance.cash.is_not(None),
                Balance.buying_power.is_not(None),
                Balance.equity.is_not(None),
            )
            .label("balance_fresh"),
            *health_columns(symbol, now),
        ),
        symbol,
    )


def _symbol_lock_key(symbol: SQLColumnExpression[str]) -> ColumnElement[int]:
    # Hashed in the database, so the lock is taken in the statement that finds the symbol.
    return func.hashtextextended(literal("dustpan:claims:") + symbol, 0)


# The claim's statements, built once (building one costs more CPU than running it).
_EXECUTION_ID = bindparam("execution_id", type_=Execution.id.type)
_NOW = bindparam("now", type_=Execution.claimed_until.type)
_FIND_AND_LOCK = select(
    Execution.symbol,
    Execution.account,
    Execution.created_at,
    func.pg_advisory_xact_lock(_symbol_lock_key(Execution.symbol)),
).where(Execution.id == _EXECUTION_ID)
# Parameters named after no column of executions: an UPDATE's parameters that match a column
# name would be set on it.
_SYMBOL = bindparam("of_symbol", type_=Execution.symbol.type)
_CLAIM_CONTEXT = _claim_context(
    _SYMBOL,
    bindparam("of_account", type_=Execution.account.type),
    _EXECUTION_ID,
    _NOW,
    bindparam("fresh_after", type_=Balance.fetched_at.type),
    bindparam("made_at", type_=Execution.created_at.type),
).cte("context")
_LOCK_TO_RECORD = (
    select(Execution, first_received_of(Execution.id), backoff_of(Execution.symbol))
    .where(Execution.id == _EXECUTION_ID)
    .with_for_update(of=Execution)
)
_LOCK_TO_RECORD_ORDER = (
    select(
        Execution.claimed_by,
        Execution.status,
        Execution.source,
        Execution.account,
        Execution.symbol,
        Execution.side,
        Execution.quantity,
        Execution.filled_quantity,
        Execution.average_price,
        Execution.submitted_at,
        first_received_of(Execution.id).label("first_received"),
        backoff_of(Execution.symbol).label("in_backoff"),
    )
    .where(Execution.id == _EXECUTION_ID)
    .with_for_update(of=Execution)
)
# The position's new holding (when a fill was booked) and the execution's order, in one write.
# Parameters are named after no column of either table (an UPDATE's parameter that matches a
# column name would be set on it).
_MOVE_POSITION = (
    update(Position)
    .where(
        Position.account == bindparam("of_account", type_=Position.account.type),
        Position.symbol == bindparam("of_symbol", type_=Position.symbol.type),
        bindparam("book", type_=Boolean),
    )
    .values(
        quantity=bindparam("position_quantity", type_=Position.quantity.type),
        average_price=bindparam("position_average", type_=Position.average_price.type),
        updated_at=_NOW,
    )
    .returning(Position.account)
    .cte("moved")
)
_WRITE_ORDER = (
    update(Execution)
    .where(Execution.id == _EXECUTION_ID)
    .values(
        broker_order_id=bindparam("order_id", type_=Execution.broker_order_id.type),
        filled_quantity=bindparam("filled", type_=Execution.filled_quantity.type),
        average_price=bindparam("average", type_=Execution.average_price.type),
        status=bindparam("new_status", type_=Execution.status.type),
        submitted_at=func.coalesce(Execution.submitted_at, _NOW),
        updated_at=_NOW,
        last_error=None,
        unknown_outcomes=0,
        claimed_by=None,
        claimed_until=None,
        submit_attempts=Execution.submit_attempts + bindparam("posted", type_=Integer),
    )
    .add_cte(_MOVE_POSITION)
)
_LOCK_SYMBOL = select(func.pg_advisory_xact_lock(_symbol_lock_key(_SYMBOL)))
# The execution, in flight and claimed by no live worker: what a lease or a turn-away applies to.
_UNCLAIMED = (
    Execution.id == _EXECUTION_ID,
    Execution.status.in_(IN_FLIGHT),
    or_(Execution.claimed_until.is_(None), Execution.claimed_until <= _NOW),
)
_TURN_AWAY = update(Execution).where(*_UNCLAIMED).values(waiting_since=func.coalesce(Execution.waiting_since, _NOW))
_WAITING = (
    select(Execution.id)
    .where(
        Execution.symbol == _SYMBOL,
        Execution.status.in_(IN_FLIGHT),
        Execution.claimed_by.is_(None),
        Execution.id != _EXECUTION_ID,
        or_(
            Execution.waiting_since.is_not(None),
            Execution.updated_at < bindparam("left_before", type_=Execution.updated_at.type),
        ),
        # A paused account's orders wait for its probe time (the sweep sends them then).
        ~exists().where(AccountPause.account == Execution.account),
    )
    .order_by(Execution.seq)
    .limit(bindparam("limit"))
    # One being changed right now (claimed, settled) is not waiting.
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_WOKEN = (
    update(Execution)
    .where(Execution.id.in_(_WAITING))
    .values(waiting_since=None, updated_at=_NOW)
    .returning(Execution.id, Execution.seq)
    .cte("woken")
)
_WAKE_WAITING = select(_WOKEN.c.id).order_by(_WOKEN.c.seq)
_TAKE_LEASE = (
    update(Execution)
    .where(*_UNCLAIMED)
    .values(
        claimed_by=bindparam("token", type_=Execution.claimed_by.type),
        claimed_until=bindparam("until", type_=Execution.claimed_until.type),
        claims=Execution.claims + 1,
        waiting_since=None,
    )
    .returning(
        Execution.symbol,
        Execution.side,
        Execution.quantity,
        Execution.account,
        Execution.client_order_id,
        Execution.claims,
    )
)


# The lease on the usual path: taken when nothing stands in the way of the claim (a call slot
# is free, the breaker is closed, the symbol is not frozen, the account not paused). Index
# probes of its own, read in the same snapshot as the context's, so both see the same rows.
_USUAL_LEASE = _TAKE_LEASE.where(
    select(func.count())
    .where(
        Execution.symbol == _SYMBOL,
        Execution.claimed_until > _NOW,
        Execution.id != _EXECUTION_ID,
    )
    .scalar_subquery()
    < bindparam("limit", type_=Integer),
    ~exists().where(SymbolFreeze.symbol == Execution.symbol),
    ~exists().where(AccountPause.account == Execution.account),
    ~exists().where(OrderCallHealth.symbol == Execution.symbol, OrderCallHealth.state != "closed"),
).cte("leased")
# The context, and the lease taken on the usual path (NULLs when it was not).
_CONTEXT_AND_LEASE = select(
    _CLAIM_CONTEXT,
    *(_USUAL_LEASE.c[name] for name in ("symbol", "side", "quantity", "account", "client_order_id", "claims")),
).select_from(_CLAIM_CONTEXT.outerjoin(_USUAL_LEASE, true()))


class _Heartbeat:
    """Keeps the claim alive while the call runs, so the lease can be short: a worker that died
    mid-call lets its execution go within one lease, not after the longest possible call.
    Without a ``clock`` (tests that fix the time) the lease is not extended.

    A call that ends within a third of the lease (nearly all) costs a dict entry: the claims of
    a process are renewed by one thread (``_HEARTBEATS``), one statement for all that are due."""

    def __init__(self, uow: UnitOfWork, claim: Claim, config: ExecutionConfig, clock: Callable[[], datetime] | None):
        self._entry = None if clock is None else _Beating(uow, claim, config.claim_lease_seconds, clock)

    def __enter__(self) -> _Heartbeat:
        if self._entry is not None:
            _HEARTBEATS.add(self._entry)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._entry is not None:
            _HEARTBEATS.remove(self._entry)


class _Beating:
    """One live claim under the process's heartbeat."""

    def __init__(self, uow: UnitOfWork, claim: Claim, lease_seconds: int, clock: Callable[[], datetime]) -> None:
        self.uow, self.claim, self.clock = uow, claim, clock
        self.lease = timedelta(seconds=lease_seconds)
        self.every = max(lease_seconds / 3, 0.2)  # float-ok: a duration
        self.due = time.monotonic() + self.every  # float-ok: a monotonic instant

    def group(self) -> tuple[str, timedelta, Callable[[], datetime]]:
        return (self.uow.url, self.lease, self.clock)


_EXTEND_LEASES = text(
    "UPDATE executions SET claimed_until = :until"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS text[])) AS claim (id, token)"
    " WHERE executions.id = claim.id AND executions.claimed_by = claim.token"
)


class _Heartbeats:
    """The process's claim heartbeat: one thread, started on the first claim that needs it (and
    again in a forked child), extends every due lease of the process in one UPDATE per database."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beating: dict[int, _Beating] = {}
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, entry: _Beating) -> None:
        with self._lock:
            self._beating[id(entry)] = entry
            if self._thread is None or not self._thread.is_alive():  # first use, or a forked child
                self._thread = threading.Thread(target=self._run, name="claim-heartbeat", daemon=True)
                self._thread.start()
        self._changed.set()

    def remove(self, entry: _Beating) -> None:
        with self._lock:
            self._beating.pop(id(entry), None)

    def _run(self) -> None:
        while True:
            self._changed.clear()  # before reading the entries: a claim added after this wakes the wait
            with self._lock:
                entries = list(self._beating.values())
            now = time.monotonic()
            due = [entry for entry in entries if entry.due <= now]
            if due:
                self._extend(due)
                continue
            wait = min((entry.due for entry in entries), default=now + 60) - now
            self._changed.wait(wait)

    def _extend(self, due: list[_Beating]) -> None:
        groups: dict[tuple[str, timedelta, Callable[[], datetime]], list[_Beating]] = {}
        for entry in due:
            entry.due = time.monotonic() + entry.every
            groups.setdefault(entry.group(), []).append(entry)
        for (_url, lease, clock), entries in groups.items():
            try:
                with entries[0].uow as uow:
                    uow.session.execute(
                        _EXTEND_LEASES,
                        {
                            "until": clock() + lease,
                            "ids": [str(entry.claim.execution_id) for entry in entries],
                            "tokens": [entry.claim.token for entry in entries],
                        },
                    )
                    uow.commit()
            except Exception as exc:  # the database is away: a lease may lapse, and a takeover is safe
                log.warning("claims of %d executions not extended: %s", len(entries), exc)


_HEARTBEATS = _Heartbeats()


def _call_broker(
    uow: UnitOfWork, brokerage: Brokerage, claim: Claim, config: ExecutionConfig, now: datetime, sleep: Sleep
) -> _Call:
    call = _Call()
    try:
        call.order = _find_or_place_order(uow, brokerage, claim, config, now, sleep, call)
    except (BalanceUnknown, AccountRefused, InvalidOrder, *UNKNOWN) as error:
        call.error = error
    return call


def _record(uow: UnitOfWork, claim: Claim, call: _Call, config: ExecutionConfig, now: datetime) -> SubmitResult:
    """The transaction after the call: write the broker's answer if the claim is still ours."""
    if call.order is not None and call.error is None and claim.access is Access.OPEN:
        quick = _record_order(uow, claim, call.order, call.posted, config, now)
        if quick is not None:
            return quick
    with uow:
        session = uow.session
        # One statement locks the row and reads what recording it may need besides.
        execution, first_received, in_backoff = session.execute(
            _LOCK_TO_RECORD, {"execution_id": claim.execution_id}
        ).one()
        if execution.claimed_by != claim.token:
            log.warning(
                "%s %s %s: the broker call outlived its claim; the worker that took over records it",
                claim.side,
                claim.quantity,
                claim.symbol,
                extra={"symbol": claim.symbol, "execution_id": str(claim.execution_id)},
            )
            return SubmitResult(SubmitOutcome.LEASE_LOST)
        execution.claimed_by, execution.claimed_until = None, None
        execution.submit_attempts += int(call.posted)
        note_call(session, claim.symbol, claim.token, claim.breaker, call.error, config.breaker, now)
        result = _apply(session, execution, claim, call, config, now, ReadAlong(first_received, in_backoff))
        uow.commit()
    return result


def _record_order(
    uow: UnitOfWork, claim: Claim, order: BrokerOrder, posted: bool, config: ExecutionConfig, now: datetime
) -> SubmitResult | None:
    """The usual record, in Core statements (the ORM's bookkeeping cost more than the SQL): the
    broker holds an order of a hedge execution that is filled or still working, the symbol is
    in no rejection backoff, and the claim is still ours. Then ``record_broker_order`` would
    book the fill on the position, write the order onto the execution and put nothing back:
    this does the same in one lock and one write. None, having written nothing, when anything
    else holds (the claim lost, settled already, a sale or an exit, shares to put back): the
    ORM path decides those."""
    with uow:
        connection = uow.session.connection()
        row = connection.execute(_LOCK_TO_RECORD_ORDER, {"execution_id": claim.execution_id}).one()
        if row.claimed_by != claim.token or row.status not in IN_FLIGHT or row.source != "hedge" or row.in_backoff:
            return None
        settlement = settle(order.status, row.quantity, order.filled_quantity)
        if settlement.unfilled:  # shares go back to the net
            return None
        note_call(uow.session, claim.symbol, claim.token, claim.breaker, None, config.breaker, now)
        filled, average = order.filled_quantity, order.filled_average_price
        unbooked = unbooked_fill(filled, average, row.filled_quantity, row.average_price)
        holding = None
        if unbooked is not None:
            delta, price = unbooked
            held = lock_holding(connection, row.account, row.symbol)
            holding = apply_fill(held, signed(Side(row.side), delta), price).holding
        connection.execute(
            _WRITE_ORDER,
            {
                "execution_id": claim.execution_id,
                "order_id": order.id,
                "filled": filled,
                "average": average,
                "new_status": settlement.status.value,
                "now": now,
                "posted": int(posted),
                "book": holding is not None,
                "of_account": row.account,
                "of_symbol": row.symbol,
                "position_quantity": None if holding is None else holding.quantity,
                "position_average": None if holding is None else holding.average_price,
            },
        )
        log_broker_order(row.side, row.quantity, row.symbol, claim.execution_id, order)
        uow.commit()
    received = row.first_received if row.submitted_at is None else None
    return SubmitResult(
        SubmitOutcome.WORKING if settlement.status is ExecutionStatus.SUBMITTED else SubmitOutcome.SETTLED,
        submitted_wait=None if received is None else now - received,
    )


def _apply(
    session: Session,
    execution: Execution,
    claim: Claim,
    call: _Call,
    config: ExecutionConfig,
    now: datetime,
    read_along: ReadAlong,
) -> SubmitResult:
    if not ExecutionStatus(execution.status).in_flight:
        return SubmitResult(SubmitOutcome.SETTLED)  # recorded already
    error = call.error
    if isinstance(error, BalanceUnknown):
        execution.last_error, execution.updated_at = str(error), now
        return SubmitResult(SubmitOutcome.WAITING_FOR_BALANCE)
    if isinstance(error, AccountRefused):
        pause_account(session, execution, str(error), config, now)
        return SubmitResult(SubmitOutcome.ACCOUNT_PAUSED)
    if isinstance(error, InvalidOrder):
        return SubmitResult(SubmitOutcome.SETTLED, settle_refused(session, execution, str(error), config, now))
    if error is not None:
        note_unknown_outcome(execution, error, config, now)
        return SubmitResult(SubmitOutcome.WORKING)  # not returned: the caller re-raises the error
    assert call.order is not None
    if claim.access is Access.PROBE:
        lift_pause(session, execution.account)
    return record_broker_order(session, execution, call.order, config, now, read_along)


def _find_or_place_order(
    uow: UnitOfWork,
    brokerage: Brokerage,
    claim: Claim,
    config: ExecutionConfig,
    now: datetime,
    sleep: Sleep,
    call: _Call,
) -> BrokerOrder:
    # Every POST follows a committed claim, so on the first claim the broker cannot hold an order
    # under our client_order_id: one round trip saved on the common path. Any later claim (a
    # retry, a redelivery, a takeover after a crash or a lapsed lease) looks it up first.
    if not claim.first:
        order = _look_up(brokerage, claim)
        if order is not None:
            return order
    if claim.side == Side.BUY.value and not claim.balance_fresh:
        # A buy increases exposure: never sent on a balance older than its max age (SPEC 1.5).
        # Sells only reduce it and must go out even when the balance cannot be read.
        ensure_known_balance(uow, brokerage, claim.account, config.balances, now, sleep)
    request = OrderRequest(claim.client_order_id, claim.symbol, claim.side, claim.quantity)
    call.posted = True
    try:
        return follow_replacements(brokerage, brokerage.submit_order(request), claim.quantity)
    except DuplicateClientOrderId:
        # Our earlier request reached the broker after all: read it back, never resend.
        order = _look_up(brokerage, claim)
        if order is None:
            raise TemporaryError("broker reports the client order id taken but cannot find it") from None
        return order
    except (InvalidOrder, AccountRefused) as refused:
        # A refusal proves nothing while an order exists under our id (an earlier request that
        # timed out, a proxy that retried): one lookup decides before anything is settled.
        order = _look_up(brokerage, claim)
        if order is None:
            raise
        log.warning(
            "%s %s %s: the broker refused a request (%s) but holds order %s under our client order id",
            claim.side,
            claim.quantity,
            claim.symbol,
            refused,
            order.id,
            extra={"symbol": claim.symbol, "execution_id": str(claim.execution_id)},
        )
        return order


def _look_up(brokerage: Brokerage, claim: Claim) -> BrokerOrder | None:
    order = brokerage.get_order_by_client_order_id(claim.client_order_id)
    return None if order is None else follow_replacements(brokerage, order, claim.quantity)


MAX_REPLACEMENTS = 10


def follow_replacements(brokerage: Brokerage, order: BrokerOrder, quantity: Decimal) -> BrokerOrder:
    """The order that carries ``order``'s fate: itself, or the end of its ``replaced_by`` chain.

    A replaced order reads ``replaced`` with its fills on the replacement (Alpaca's cancel-replace
    and venue-side replacements), so settling the original would re-order live shares. What we
    cannot follow with certainty holds the execution for a person (``UnresolvedOrder``)."""
    hops = 0
    while order.status == "replaced":
        if not order.replaced_by:
            raise UnresolvedOrder(f"order {order.id} is replaced, but the broker names no replacement")
        if order.filled_quantity > 0:
            raise UnresolvedOrder(
                f"order {order.id} filled {order.filled_quantity} before it was replaced by {order.replaced_by}:"
                " a person must tell which fills are whose"
            )
        hops += 1
        if hops > MAX_REPLACEMENTS:
            raise UnresolvedOrder(f"order {order.id}: more than {MAX_REPLACEMENTS} replacements in a row")
        order = brokerage.get_order(order.replaced_by)
        if order.quantity != quantity:
            raise UnresolvedOrder(f"replacement order {order.id} is for {order.quantity} shares, not {quantity}")
    return order


__all__ = [
    "Claim",
    "ExecutionConfig",
    "SubmitOutcome",
    "SubmitResult",
    "claim_execution",
    "claimant",
    "follow_replacements",
    "release_claims_of",
    "submit_execution",
]
