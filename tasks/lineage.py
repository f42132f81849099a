"""Trade -> execution lineage across rejections and re-executions (SPEC 1.10).

An execution takes shares from trades and from returns (the unfilled shares of an earlier
execution put back into the net). A share taken from a return still belongs to the trades
behind that earlier execution: when a return is taken, ``origins_of_take`` names those trades
and the re-execution stores them as ``contribution_origins``, so its ``trade_ids`` and each
trade's executions survive any number of re-executions.

Which trades' shares went unfilled is a convention, the same everywhere: an execution's shares
are ordered as it took them (returns first, then trades, oldest first) and its filled quantity
is the front of that order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ScalarSelect, SQLColumnExpression, func, literal, select
from sqlalchemy.orm import Session

from models.domain.quantities import ZERO
from models.tables import Contribution, ContributionOrigin, Execution, ExecutionReturn, Trade

FILLED_STATUSES = ("filled", "partially_filled")


@dataclass(frozen=True)
class Part:
    trade_id: str
    quantity: Decimal  # unsigned


def execution_parts(session: Session, execution_id: uuid.UUID) -> list[Part]:
    """The execution's shares by trade, in the order it took them."""
    origins = session.execute(
        select(ContributionOrigin.trade_id, ContributionOrigin.quantity)
        .where(ContributionOrigin.execution_id == execution_id)
        .order_by(ContributionOrigin.id)
    ).all()
    direct = session.execute(
        select(Contribution.trade_id, Contribution.quantity)
        .where(Contribution.execution_id == execution_id, Contribution.trade_id.is_not(None))
        .order_by(Contribution.id)
    ).all()
    return [Part(str(t), abs(q)) for t, q in [*origins, *direct]]


def _skip(parts: Sequence[Part], amount: Decimal) -> list[Part]:
    """The parts after the first ``amount`` shares."""
    left: list[Part] = []
    for part in parts:
        if amount >= part.quantity:
            amount -= part.quantity
            continue
        left.append(Part(part.trade_id, part.quantity - amount))
        amount = ZERO
    return left


def _take(parts: Sequence[Part], amount: Decimal) -> list[Part]:
    """The first ``amount`` shares of the parts."""
    taken: list[Part] = []
    for part in parts:
        if amount <= 0:
            break
        share = min(part.quantity, amount)
        taken.append(Part(part.trade_id, share))
        amount -= share
    return taken


def origins_of_take(session: Session, return_id: int, taken: Decimal) -> list[Part]:
    """The trades behind ``taken`` (signed) shares of a return, after what earlier takes had."""
    returned = session.get(ExecutionReturn, return_id)
    assert returned is not None
    execution = session.get(Execution, returned.execution_id)
    assert execution is not None
    unfilled = _skip(execution_parts(session, execution.id), execution.filled_quantity)
    already = session.scalar(
        select(func.coalesce(func.sum(func.abs(ContributionOrigin.quantity)), 0)).where(
            ContributionOrigin.return_id == return_id
        )
    )
    return _take(_skip(unfilled, already or ZERO), abs(taken))


def trade_ids_by_execution(session: Session, execution_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """Every trade behind each execution: taken directly, or through returns it took."""
    ids = list(execution_ids)
    direct = select(Contribution.execution_id, Contribution.trade_id).where(
        Contribution.execution_id.in_(ids), Contribution.trade_id.is_not(None)
    )
    through = select(ContributionOrigin.execution_id, ContributionOrigin.trade_id).where(
        ContributionOrigin.execution_id.in_(ids)
    )
    found: dict[uuid.UUID, list[str]] = {}
    for execution_id, trade_id in [*session.execute(through), *session.execute(direct)]:
        listed = found.setdefault(execution_id, [])
        if str(trade_id) not in listed:
            listed.append(str(trade_id))
    return found


def first_received_at(session: Session, execution_id: uuid.UUID) -> datetime | None:
    """When the oldest trade the execution took shares from directly was received: the start of
    its received -> submitted latency. None for an execution made only of returned shares (its
    trades waited through an earlier execution's rejection: not the pipeline's latency) and for
    sales and exits, which have no trades."""
    return session.scalar(select(first_received_of(literal(execution_id, Contribution.execution_id.type))))


def first_received_of(execution_id: SQLColumnExpression[uuid.UUID]) -> ScalarSelect[datetime]:
    """``first_received_at`` as a scalar subquery, to read along with the execution's own row."""
    return (
        select(func.min(Trade.received_at))
        .join(Contribution, Contribution.trade_id == Trade.id)
        .where(Contribution.execution_id == execution_id)
        .scalar_subquery()
    )


@dataclass(frozen=True)
class TradeExecution:
    execution: Execution
    quantity: Decimal  # the trade's shares in it (unsigned)
    filled: Decimal  # of those, filled at the broker
    via_return: bool


def trade_executions(session: Session, trade_id: str) -> list[TradeExecution]:
    """Every execution the trade contributed to, directly or through returns, oldest first."""
    direct = select(Contribution.execution_id).where(Contribution.trade_id == trade_id)
    through = select(ContributionOrigin.execution_id).where(ContributionOrigin.trade_id == trade_id)
    direct_ids = set(session.scalars(direct))
    executions = session.scalars(
        select(Execution).where(Execution.id.in_(direct.union(through))).order_by(Execution.seq)
    ).all()
    return [_share_of(session, e, trade_id, e.id not in direct_ids) for e in executions]


def _share_of(session: Session, execution: Execution, trade_id: str, via_return: bool) -> TradeExecution:
    parts = execution_parts(session, execution.id)
    filled = execution.filled_quantity if execution.status in FILLED_STATUSES else ZERO
    mine = sum((p.quantity for p in parts if p.trade_id == trade_id), ZERO)
    mine_filled = sum((p.quantity for p in _take(parts, filled) if p.trade_id == trade_id), ZERO)
    return TradeExecution(execution, mine, mine_filled, via_return)


def is_completed(trade_quantity: Decimal, executions: Iterable[TradeExecution]) -> bool:
    """A trade is completed once its whole quantity is in filled executions."""
    return sum((e.filled for e in executions), ZERO) == trade_quantity
