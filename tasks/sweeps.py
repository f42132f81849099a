"""Sweep: find work whose message was lost (Saleor-style: state lives in rows, not messages)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import and_, exists, func, or_, select, update

from models.db import UnitOfWork
from models.tables import Accumulator, Execution, SymbolFreeze, Trade
from models.tables_ops import AccountPause

# Oldest first, at most this many per tick: a backlog is worked off over several ticks
# instead of one tick publishing for longer than its time limit.
RESEND_PER_SWEEP = 500


@dataclass(frozen=True)
class StrandedWork:
    symbols: list[str]  # trades waiting, or a net past the threshold and no backoff in force
    executions: list[uuid.UUID]  # pending too long, or submitted and not heard of lately


def find_stranded_work(
    uow: UnitOfWork,
    now: datetime,
    threshold: Decimal,
    pending_stale: timedelta,
    submitted_stale: timedelta,
    trade_stale: timedelta = timedelta(seconds=2),
) -> StrandedWork:
    with uow:
        session = uow.session
        waiting = session.scalars(
            select(Trade.symbol).where(Trade.status == "received", Trade.received_at < now - trade_stale).distinct()
        ).all()
        executable = session.scalars(
            select(Accumulator.symbol)
            .outerjoin(SymbolFreeze, SymbolFreeze.symbol == Accumulator.symbol)
            .where(
                func.abs(Accumulator.net_quantity) >= threshold,  # models.domain.accumulation.crosses_threshold
                or_(Accumulator.hold_until.is_(None), Accumulator.hold_until <= now),
                SymbolFreeze.symbol.is_(None),
            )
        ).all()
        executions = session.scalars(
            select(Execution.id)
            .where(
                or_(
                    and_(Execution.status == "pending", Execution.updated_at < now - pending_stale),
                    and_(Execution.status == "submitted", Execution.updated_at < now - submitted_stale),
                    # Claimed by a worker that stopped renewing it (killed mid-call): at once.
                    and_(Execution.claimed_by.is_not(None), Execution.claimed_until <= now),
                ),
                Execution.status.in_(("pending", "submitted")),
                # A worker is calling the broker for it: its lease says until when.
                or_(Execution.claimed_until.is_(None), Execution.claimed_until <= now),
                # A paused account's orders wait for its probe time, not for every sweep.
                ~exists().where(AccountPause.account == Execution.account, AccountPause.probe_after > now),
            )
            .order_by(Execution.updated_at)
            .limit(RESEND_PER_SWEEP)
        ).all()
    return StrandedWork(sorted(set(waiting) | set(executable)), list(executions))


def find_orphaned_executions(
    uow: UnitOfWork, now: datetime, died_at: datetime | None = None, per_symbol: int | None = None
) -> list[uuid.UUID]:
    """In-flight executions whose claim has lapsed: the worker calling the broker for them
    stopped renewing its lease (a live one renews it every third of it), so it is dead.

    With ``died_at`` (when an execution node was seen dead), also in-flight executions claimed
    by nobody and last changed before then: the dead node may have taken their message off the
    queue (prefetched, or waiting out a retry's countdown) without claiming it. Of those, at most
    ``per_symbol`` (the symbol's call slots) of each symbol, oldest first: a symbol whose calls
    hang keeps dozens waiting in their rows, and a message for each would only be turned away
    (SYMBOL_BUSY) while healthy symbols' orders queue behind them. The rest are marked
    waiting (``waiting_since``, as if turned away): the claims of the ones sent see them and
    wake them when their calls end (``tasks.execution._waiting``). Some of them are still queued
    elsewhere, and get a duplicate message that finds the claim taken or the order recorded;
    that is the price of not waiting ``pending_stale_seconds`` for the sweep, paid once per
    death, at most ``RESEND_PER_SWEEP`` oldest first."""
    lapsed = and_(Execution.claimed_by.is_not(None), Execution.claimed_until <= now)
    orphaned = lapsed
    if died_at is not None:
        orphaned = or_(lapsed, and_(Execution.claimed_by.is_(None), Execution.updated_at <= died_at))
    candidates = (
        select(
            Execution.id,
            Execution.updated_at,
            lapsed.label("lapsed"),
            # Each symbol's unclaimed ones numbered oldest first (lapsed claims are all sent).
            func.row_number().over(partition_by=(Execution.symbol, lapsed), order_by=Execution.seq).label("nth"),
        )
        .where(
            Execution.status.in_(("pending", "submitted")),
            orphaned,
            ~exists().where(AccountPause.account == Execution.account, AccountPause.probe_after > now),
        )
        .subquery("candidates")
    )
    query = select(candidates.c.id).order_by(candidates.c.updated_at).limit(RESEND_PER_SWEEP)
    if per_symbol is None:
        with uow:
            return list(uow.session.scalars(query).all())
    query = query.where(or_(candidates.c.lapsed, candidates.c.nth <= per_symbol))
    # The rest wait with no message, as if turned away: marked, so that the next claim of their
    # symbol wakes them (tasks.execution ``_waiting``).
    rest = select(candidates.c.id).where(~candidates.c.lapsed, candidates.c.nth > per_symbol)
    with uow:
        found = list(uow.session.scalars(query).all())
        uow.session.execute(
            update(Execution)
            .where(Execution.id.in_(rest))
            .values(waiting_since=func.coalesce(Execution.waiting_since, now))
            .execution_options(synchronize_session=False)
        )
        uow.commit()
        return found
