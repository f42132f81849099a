"""Normalization's consolidation (SPEC 1.4): a position worth from ``dust.normalize_usd`` up to
``dust.consolidate_usd`` that the venue cannot sell is topped up with a buy to the smallest
quantity it can sell again.

A buy increases risk: it is planned only on a fresh known balance that covers it, never for a
frozen or restricted symbol, and it goes out as an execution (source ``consolidate``), so the
execution gate checks the balance's age again before sending and the order is sent exactly once.
Safe to run twice: while a consolidation of the symbol is in flight no second one is planned.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.db import UnitOfWork
from models.domain.dust import top_up_to_sellable
from models.domain.quantities import canonical, money_text
from models.domain.symbols import is_restricted
from models.domain.venue import VenueRules
from models.tables import Execution, SymbolFreeze
from tasks.balances import BalanceConfig, balance_as_known
from tasks.guards import TradingPolicy
from tasks.ingestion import client_order_id_for
from tasks.positions import lock_position


def consolidate_position(
    uow: UnitOfWork,
    account: str,
    symbol: str,
    held: Decimal,
    price: Decimal,
    rules: VenueRules,
    policy: TradingPolicy,
    balances: BalanceConfig,
    now: datetime,
    execute: bool,
) -> tuple[str, str, uuid.UUID | None]:
    """(action, reason, execution id): consolidated | would_consolidate | kept | skipped."""
    if is_restricted(symbol, policy.restricted_symbols):
        return "skipped", "restricted symbol: never traded", None
    buy = top_up_to_sellable(held, price, rules)
    if buy is None:
        return "skipped", "no buy can make it sellable on this venue", None
    if buy == 0:
        return "kept", "already sellable", None
    cost = buy * price
    with uow:
        session = uow.session
        lock_position(session, account, symbol)  # one consolidation decision per position at a time
        blocked = _blocked(session, account, symbol, cost, balances, now)
        if blocked is not None:
            return "skipped", blocked, None
        what = f"buy {canonical(buy)} for about {money_text(cost)} USD to reach a sellable quantity"
        if not execute:
            return "would_consolidate", f"{what}: dry run", None
        execution_id = _new_buy(session, account, symbol, buy, now, reason=what)
        uow.commit()
    return "consolidated", what, execution_id


def _blocked(
    session: Session, account: str, symbol: str, cost: Decimal, balances: BalanceConfig, now: datetime
) -> str | None:
    if session.get(SymbolFreeze, symbol) is not None:
        return "symbol is frozen"
    in_flight = select(Execution.id).where(
        Execution.account == account,
        Execution.symbol == symbol,
        Execution.source == "consolidate",
        Execution.status.in_(("pending", "submitted")),
    )
    if session.scalar(in_flight) is not None:
        return "a consolidation is in flight"
    balance = balance_as_known(session, account, balances.max_age, now)
    if not balance.known or balance.buying_power is None:
        return "balance unknown or older than balances.max_age_seconds: no risk-increasing buy"
    if balance.buying_power < cost:
        return f"buying power {money_text(balance.buying_power)} USD does not cover {money_text(cost)} USD"
    return None


def _new_buy(
    session: Session, account: str, symbol: str, quantity: Decimal, now: datetime, *, reason: str
) -> uuid.UUID:
    execution_id = uuid.uuid4()
    session.add(
        Execution(
            id=execution_id,
            symbol=symbol,
            side="buy",
            quantity=quantity,
            client_order_id=client_order_id_for(execution_id),
            source="consolidate",
            account=account,
            reason=reason,
            created_at=now,
            updated_at=now,
        )
    )
    session.flush()
    return execution_id


Consolidator = Callable[[str, str, Decimal, Decimal], tuple[str, str, uuid.UUID | None]]
