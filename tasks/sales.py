"""Notional sales (SPEC 1.8): quote, cap the dust, place the sale, and ledger it when it fills."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select

from models.db import UnitOfWork
from models.domain.quantities import ZERO, canonical, money_text
from models.domain.sales import SaleQuote, quote_sale
from models.domain.venue import VenueRules
from models.tables import DustLedger, Execution
from tasks.exits import new_sell
from tasks.guards import Refused, TradingPolicy, ensure_tradable, ensure_venue_accepts
from tasks.positions import committed_to_sell, lock_position


@dataclass(frozen=True)
class PlacedSale:
    execution: Execution
    quote: SaleQuote


def check_quote(quote: SaleQuote, rules: VenueRules, symbol: str) -> None:
    """Refuse what cannot become a sale: nothing tradable, or dust above the cap."""
    if not quote.within_cap:
        raise Refused(
            "dust_cap_exceeded",
            f"selling {money_text(quote.requested)} USD of {symbol} would leave {money_text(quote.dust)} USD of "
            f"dust, above the cap of {money_text(quote.cap)}; {_advice(quote)}",
            cap=money_text(quote.cap),
            would_be_dust=money_text(quote.dust),
        )
    ensure_venue_accepts(rules, symbol, quote.quantity, quote.price)


def _advice(quote: SaleQuote) -> str:
    above = f"raise it to {money_text(quote.nearest_above)} USD" if quote.nearest_above is not None else ""
    if quote.nearest_below is None:
        return f"{above} or split it into sales whose dust fits the cap"
    return f"reduce the sale to {money_text(quote.nearest_below)} USD, {above}, or split it into sales whose dust fits"


def place_notional_sale(
    uow: UnitOfWork,
    policy: TradingPolicy,
    rules: VenueRules,
    *,
    symbol: str,
    notional: Decimal,
    account: str,
    price: Decimal,
    cap: Decimal,
    now: datetime,
) -> PlacedSale:
    """The sell execution with its quote; enqueue after commit. The ledger row waits for the fill."""
    quote = quote_sale(notional, price, rules, cap)
    with uow:
        session = uow.session
        ensure_tradable(session, policy, symbol, account)
        check_quote(quote, rules, symbol)
        position = lock_position(session, account, symbol)
        available = position.quantity - committed_to_sell(session, account, symbol)
        if quote.quantity > available:
            raise Refused(
                "insufficient_position",
                f"{account} holds {canonical(max(available, ZERO))} {symbol} available;"
                f" the sale needs {canonical(quote.quantity)}",
            )
        execution = new_sell(
            session, account, symbol, quote.quantity, "sell", now, reason=f"sell {canonical(notional)} USD"
        )
        execution.requested_notional = quote.requested
        execution.quoted_price = quote.price
        uow.commit()
    return PlacedSale(execution, quote)


@dataclass(frozen=True)
class LedgerVolume:
    sales: int
    proceeds: Decimal
    dust: Decimal

    @property
    def volume_with_dust(self) -> Decimal:
        return self.proceeds + self.dust


def ledger_volume(uow: UnitOfWork, symbol: str | None = None) -> LedgerVolume:
    """Volume including dust in one aggregate pass over the ledger, not a loop over sales."""
    query = select(
        func.count(),
        func.coalesce(func.sum(DustLedger.proceeds), 0),
        func.coalesce(func.sum(DustLedger.dust), 0),
    )
    if symbol:
        query = query.where(DustLedger.symbol == symbol)
    with uow:
        count, proceeds, dust = uow.session.execute(query).one()
    return LedgerVolume(count, proceeds, dust)
