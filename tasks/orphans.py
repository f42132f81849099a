"""Orphaned dust remainders (SPEC 1.7): every cleanup run retries them.

An exit's remainder whose closing order failed is kept as ``dust_orphaned``. Each run of the
cleanup job looks at every orphan: one the broker no longer holds is cleared; one it still
holds gets a new ``dust_cleanup`` order (P&L reason ``dust_cleanup`` when it fills, and the
settlement clears the orphan), unless its symbol is frozen or restricted, the venue would
refuse the quantity, or an order for it is still in flight. Safe to run twice: a retry is a
row committed before it is enqueued, and a second run sees it in flight.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.quantities import ZERO, canonical
from models.domain.symbols import is_restricted
from models.domain.venue import VenueRules
from models.tables import Position, SymbolFreeze
from tasks.exits import clear_orphan, new_sell
from tasks.guards import TradingPolicy, venue_refusal
from tasks.positions import committed_to_sell, last_known_price

log = logging.getLogger(__name__)

# What the broker holds per symbol for an account, or None when it could not be asked.
HeldAtBroker = Callable[[str], dict[str, Decimal] | None]


@dataclass(frozen=True)
class OrphanLine:
    account: str
    symbol: str
    quantity: Decimal
    action: str  # retried | cleared | skipped | failed
    reason: str
    execution_id: uuid.UUID | None = None

    def as_json(self) -> dict[str, str | None]:
        return {
            "account": self.account,
            "symbol": self.symbol,
            "quantity": canonical(self.quantity),
            "action": self.action,
            "reason": self.reason,
            "execution_id": None if self.execution_id is None else str(self.execution_id),
        }


@dataclass
class OrphanRun:
    lines: list[OrphanLine] = field(default_factory=list)

    @property
    def execution_ids(self) -> list[uuid.UUID]:
        return [line.execution_id for line in self.lines if line.execution_id is not None]


def retry_orphans(
    uow: UnitOfWork,
    held_at_broker: HeldAtBroker,
    rules_for: Callable[[str], VenueRules],
    policy: TradingPolicy,
    now: datetime,
) -> OrphanRun:
    """One pass over the orphans; the caller enqueues ``execution_ids`` after this returns."""
    run = OrphanRun()
    with uow:
        orphans = uow.session.execute(
            select(Position.account, Position.symbol).where(Position.status == "dust_orphaned")
        ).all()
    holdings: dict[str, dict[str, Decimal] | None] = {}
    for account, symbol in orphans:
        if account not in holdings:
            holdings[account] = held_at_broker(account)  # the network call, with no transaction open
        run.lines.append(_retry_one(uow, account, symbol, holdings[account], rules_for(symbol), policy, now))
    return run


def _retry_one(
    uow: UnitOfWork,
    account: str,
    symbol: str,
    held: dict[str, Decimal] | None,
    rules: VenueRules,
    policy: TradingPolicy,
    now: datetime,
) -> OrphanLine:
    with uow:
        session = uow.session
        # Row lock: a settlement of this position must not change it under the decision.
        position = session.scalars(
            select(Position).where(Position.account == account, Position.symbol == symbol).with_for_update()
        ).one()
        if position.status != "dust_orphaned":
            return OrphanLine(account, symbol, position.quantity, "skipped", "no longer orphaned")
        line = _decide(session, position, held, rules, policy, now)
        uow.commit()
    if line.action == "failed":
        log.warning("%s %s: orphan retry failed: %s", account, symbol, line.reason, extra={"symbol": symbol})
    return line


def _decide(
    session: Session,
    position: Position,
    held: dict[str, Decimal] | None,
    rules: VenueRules,
    policy: TradingPolicy,
    now: datetime,
) -> OrphanLine:
    account, symbol, tracked = position.account, position.symbol, position.quantity

    def line(action: str, reason: str, execution_id: uuid.UUID | None = None) -> OrphanLine:
        return OrphanLine(account, symbol, tracked, action, reason, execution_id)

    if held is None:
        return line("failed", "broker positions could not be read; retried next run")
    in_flight = committed_to_sell(session, account, symbol)
    if in_flight > 0:
        # Its fill is still to be booked: the broker's count may already leave those shares out.
        return line("skipped", "an order for it is in flight")
    if held.get(symbol, ZERO) <= 0:
        clear_orphan(position, "the broker no longer holds the shares", now)
        position.quantity, position.average_price = ZERO, None
        return line("cleared", "the broker no longer holds the shares")
    if is_restricted(symbol, policy.restricted_symbols):
        return line("skipped", "restricted symbol: never traded")
    if session.get(SymbolFreeze, symbol) is not None:
        return line("skipped", "symbol is frozen")
    quantity = min(position.quantity, held[symbol])
    refusal = venue_refusal(rules, quantity, last_known_price(session, symbol))
    if refusal is not None:
        return line("skipped", f"the venue would refuse {canonical(quantity)}: {refusal}")
    retry = new_sell(session, account, symbol, quantity, "dust_cleanup", now, reason="retry of an orphaned remainder")
    return line("retried", f"order for {canonical(quantity)}", retry.id)
