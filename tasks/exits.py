"""Exits (SPEC 1.7): sell a position or part of it; a remainder worth less than
``dust.min_position_value`` is closed by a market order with P&L reason ``dust_cleanup``,
and if that order fails the remainder is kept, marked ``dust_orphaned``, never deleted."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.positions import remainder_is_dust
from models.domain.quantities import ZERO, canonical
from models.domain.venue import VenueRules
from models.tables import Execution, Position
from tasks.dust_settlement import align_aggregate_with_position, ledger_filled_sale, settle_dust_sale
from tasks.guards import Refused, TradingPolicy, ensure_tradable, ensure_venue_accepts
from tasks.ingestion import client_order_id_for
from tasks.positions import committed_to_sell, last_known_price, lock_position

log = logging.getLogger(__name__)


def request_exit(
    uow: UnitOfWork,
    policy: TradingPolicy,
    rules: VenueRules,
    *,
    symbol: str,
    quantity: Decimal | None,
    reason: str,
    account: str,
    now: datetime,
) -> Execution:
    """Create the exit's sell execution (``quantity`` None: the whole available position)."""
    with uow:
        session = uow.session
        ensure_tradable(session, policy, symbol, account)
        position = lock_position(session, account, symbol)
        available = position.quantity - committed_to_sell(session, account, symbol)
        wanted = available if quantity is None else quantity
        if available <= 0 or wanted > available:
            raise Refused(
                "insufficient_position",
                f"{account} holds {canonical(max(available, ZERO))} {symbol} available to exit",
            )
        # Like a sale, an exit never sends what the venue cannot trade (SPEC 1.7).
        ensure_venue_accepts(rules, symbol, wanted, last_known_price(session, symbol))
        execution = new_sell(session, account, symbol, wanted, "exit", now, reason=reason)
        uow.commit()
        return execution


def new_sell(
    session: Session,
    account: str,
    symbol: str,
    quantity: Decimal,
    source: str,
    now: datetime,
    *,
    reason: str | None = None,
    parent: uuid.UUID | None = None,
) -> Execution:
    execution_id = uuid.uuid4()
    execution = Execution(
        id=execution_id,
        symbol=symbol,
        side="sell",
        quantity=quantity,
        client_order_id=client_order_id_for(execution_id),
        source=source,
        account=account,
        reason=reason,
        parent_execution_id=parent,
        created_at=now,
        updated_at=now,
    )
    session.add(execution)
    session.flush()
    return execution


def settle_position_order(
    session: Session, execution: Execution, unfilled: Decimal, min_position_value: Decimal, now: datetime
) -> list[uuid.UUID]:
    """After a sale, exit or cleanup finished: ledger a sale, settle a dust aggregate, close a dust
    remainder, or flag (and later clear) an orphan. Returns executions created in this commit."""
    if execution.source == "dust_sale":
        settle_dust_sale(session, execution, now)
    if execution.source == "sell":
        ledger_filled_sale(session, execution, now)
    if execution.source not in ("exit", "dust_cleanup"):
        return []
    position = lock_position(session, execution.account, execution.symbol)
    align_aggregate_with_position(session, execution, position.quantity, now)
    if execution.source == "dust_cleanup" and unfilled > 0:
        mark_orphaned(position, execution, unfilled, now)
        return []
    if position.quantity <= 0 and position.status == "dust_orphaned":
        clear_orphan(position, f"sold by {execution.source} {execution.id}", now)
    if execution.source == "exit" and execution.filled_quantity > 0 and execution.average_price:
        return _close_dust_remainder(session, execution, position.quantity, min_position_value, now)
    return []


def mark_orphaned(position: Position, execution: Execution, unfilled: Decimal, now: datetime) -> None:
    """The shares are still at the broker: keep tracking them for the cleanup job, loudly."""
    position.status = "dust_orphaned"
    position.updated_at = now
    log.warning(
        "%s %s: dust remainder orphaned, %s of %s not sold by %s (%s); the cleanup job retries it",
        position.account,
        position.symbol,
        unfilled,
        execution.quantity,
        execution.id,
        execution.last_error or execution.status,
        extra={"symbol": position.symbol, "execution_id": str(execution.id)},
    )


def clear_orphan(position: Position, why: str, now: datetime) -> None:
    position.status = "open"
    position.updated_at = now
    log.info("%s %s: orphaned remainder cleared, %s", position.account, position.symbol, why)


def _close_dust_remainder(
    session: Session, execution: Execution, held: Decimal, min_position_value: Decimal, now: datetime
) -> list[uuid.UUID]:
    assert execution.average_price is not None
    remaining = held - committed_to_sell(session, execution.account, execution.symbol)
    if not remainder_is_dust(remaining, execution.average_price, min_position_value):
        return []
    if _has_cleanup(session, execution.id):
        return []
    worth = remaining * execution.average_price
    cleanup = new_sell(
        session,
        execution.account,
        execution.symbol,
        remaining,
        "dust_cleanup",
        now,
        reason=f"remainder worth {worth} < dust.min_position_value {min_position_value}",
        parent=execution.id,
    )
    return [cleanup.id]


def _has_cleanup(session: Session, exit_id: uuid.UUID) -> bool:
    return session.scalar(select(Execution.id).where(Execution.parent_execution_id == exit_id)) is not None
