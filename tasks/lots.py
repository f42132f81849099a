"""Positions sync: the broker's positions of each account become holding lots (source 'broker').

Policy. Each account+symbol has at most one *open* broker lot, updated in place. Its quantity
is what the broker holds minus what other live lots already account for: open lots of other
sources (sale remainders, manual) and live dust aggregates (for a selling one, its unfilled
part). So once the scan has moved a broker lot into an aggregate, that lot is never touched
again (its quantity is the aggregate's lineage) and new shares at the broker appear as a new
open broker lot. A position gone at the broker leaves its lot at quantity 0, status open,
with a note; the row is kept and reused if the position comes back. Lots are never deleted.
When live lots track more than the broker holds (someone sold dust outside dustpan) the
difference is reported as a shortfall for an operator: aggregates are not rewritten blindly.
Short positions have no dust to sell: they are reported and count as 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.quantities import ZERO, canonical
from models.tables import Execution
from models.tables_ops import Lot
from tasks.ports import Brokerage, BrokerageError, BrokerPosition

log = logging.getLogger(__name__)

LIVE_AGGREGATE = ("dust_pending", "dust_ready", "selling")
LOT_BOOKS_LOCK = 0x6475737470616E  # "dustpan" in ASCII
CLOSED_NOTE = "Position closed at the broker"


def lock_lot_books(session: Session) -> None:
    """One lot bookkeeper (dust scan, positions sync) at a time across the fleet.

    The sync derives the open broker lot from what aggregates already track, so a scan moving
    lots between its read and its write would make it count them twice; two scans would
    aggregate the same lots. Held until commit or rollback: a killed worker's lock dies with
    its connection."""
    session.execute(select(func.pg_advisory_xact_lock(LOT_BOOKS_LOCK)))


@dataclass
class AccountSync:
    account: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    shortfalls: dict[str, Decimal] = field(default_factory=dict)  # tracked beyond what the broker holds
    shorts: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "closed": self.closed,
            "shortfalls": {symbol: canonical(quantity) for symbol, quantity in self.shortfalls.items()},
            "shorts": self.shorts,
            "error": self.error,
        }


@dataclass
class PositionsSyncReport:
    accounts: list[AccountSync] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {sync.account: sync.as_json() for sync in self.accounts}


def sync_positions(
    uow: UnitOfWork, brokerages: Callable[[str], Brokerage], accounts: Iterable[str], now: datetime
) -> PositionsSyncReport:
    """Every account in turn; one account's broker trouble does not stop the others."""
    report = PositionsSyncReport()
    for account in sorted(accounts):
        try:
            positions = brokerages(account).list_positions()
        except BrokerageError as exc:
            log.warning("positions of %s not synced: %s", account, exc)
            report.accounts.append(AccountSync(account, error=f"{type(exc).__name__}: {exc}"))
            continue
        report.accounts.append(sync_account_lots(uow, account, positions, now))
    return report


def sync_account_lots(uow: UnitOfWork, account: str, positions: list[BrokerPosition], now: datetime) -> AccountSync:
    result = AccountSync(account, shorts=sorted(p.symbol for p in positions if p.quantity < 0))
    held = {p.symbol: p for p in positions if p.quantity > 0}
    with uow:
        session = uow.session
        lock_lot_books(session)
        broker_lots, tracked = _open_lots(session, account)
        for symbol in sorted(set(held) | set(broker_lots) | set(tracked)):
            position = held.get(symbol)
            target = (position.quantity if position else ZERO) - tracked.get(symbol, ZERO)
            if target < 0:
                result.shortfalls[symbol] = -target
                log.warning("%s %s: lots track %s more than the broker holds", account, symbol, canonical(-target))
                target = ZERO
            _set_broker_lot(session, result, account, symbol, broker_lots.get(symbol), target, position, now)
        uow.commit()
    return result


def _open_lots(session: Session, account: str) -> tuple[dict[str, Lot], dict[str, Decimal]]:
    """The open broker lot of each symbol (locked), and what every other live lot tracks."""
    tracked: dict[str, Decimal] = {
        symbol: quantity
        for symbol, quantity in session.execute(
            select(
                Lot.symbol,
                func.sum(
                    case(
                        (Lot.status == "selling", Lot.quantity - func.coalesce(Execution.filled_quantity, 0)),
                        else_=Lot.quantity,
                    )
                ),
            )
            .outerjoin(Execution, Execution.id == Lot.execution_id)
            .where(Lot.account == account, Lot.kind == "aggregate", Lot.status.in_(LIVE_AGGREGATE))
            .group_by(Lot.symbol)
        )
    }
    broker_lots: dict[str, Lot] = {}
    open_lots = session.scalars(
        select(Lot)
        .where(Lot.account == account, Lot.kind == "holding", Lot.status == "open")
        .order_by(Lot.id)
        .with_for_update()
    )
    for lot in open_lots:
        if lot.source == "broker" and lot.symbol not in broker_lots:
            broker_lots[lot.symbol] = lot
        else:
            tracked[lot.symbol] = tracked.get(lot.symbol, ZERO) + lot.quantity
    return broker_lots, tracked


def _set_broker_lot(
    session: Session,
    result: AccountSync,
    account: str,
    symbol: str,
    lot: Lot | None,
    target: Decimal,
    position: BrokerPosition | None,
    now: datetime,
) -> None:
    price = position.current_price if position is not None else None
    if lot is None:
        if target > 0:
            session.add(
                Lot(
                    account=account,
                    symbol=symbol,
                    kind="holding",
                    source="broker",
                    quantity=target,
                    price=price,
                    status="open",
                    created_at=now,
                    updated_at=now,
                )
            )
            result.created.append(symbol)
        return
    gone = position is None and lot.note != CLOSED_NOTE
    if lot.quantity == target and not gone:
        return
    lot.quantity = target
    lot.price = price if price is not None else lot.price
    lot.note = CLOSED_NOTE if position is None else None
    lot.updated_at = now
    (result.closed if gone else result.updated).append(symbol)
