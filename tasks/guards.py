"""Refusals shared by every flow that sells: why an order may not be placed, as a 4xx."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from models.domain.quantities import canonical
from models.domain.symbols import is_restricted
from models.domain.venue import VenueRules
from models.tables import SymbolFreeze


class Refused(Exception):
    """A request the operator sent that cannot be carried out; nothing was written.

    ``error`` names the reason (``symbol_frozen``, ``not_tradable``...); what it means to a
    caller (an HTTP status, an exit code) is decided at the edge, in one table
    (``workers.api_orders.REFUSAL_STATUS``)."""

    def __init__(self, error: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.error = error
        self.details = details

    def payload(self) -> dict[str, Any]:
        return {"error": self.error, **self.details, "message": str(self)}


@dataclass(frozen=True)
class TradingPolicy:
    restricted_symbols: frozenset[str]
    accounts: frozenset[str]


def ensure_tradable(session: Session, policy: TradingPolicy, symbol: str, account: str) -> None:
    if account not in policy.accounts:
        raise Refused("unknown_account", f"account {account!r} is not configured")
    if is_restricted(symbol, policy.restricted_symbols):
        raise Refused("symbol_restricted", f"{symbol} is restricted and never traded")
    freeze = session.get(SymbolFreeze, symbol)
    if freeze is not None:
        raise Refused("symbol_frozen", f"{symbol} is frozen: {freeze.reason}")


def venue_refusal(rules: VenueRules, quantity: Decimal, price: Decimal | None) -> str | None:
    """Why the venue would refuse the quantity. Without a known price the notional minimum
    cannot be judged and is left to the venue."""
    judged = rules if price is not None else replace(rules, min_notional=Decimal(0))
    return judged.refusal(quantity, price if price is not None else Decimal(0))


def ensure_venue_accepts(rules: VenueRules, symbol: str, quantity: Decimal, price: Decimal | None) -> None:
    """A refusal naming the venue's minimum when it would refuse the order (sales and exits alike)."""
    refusal = venue_refusal(rules, quantity, price)
    if refusal is None:
        return
    at = f" at price {canonical(price)}" if price is not None else ""
    raise Refused(
        "not_tradable",
        f"{symbol}: {canonical(quantity)} cannot be sold{at}: {refusal}",
        min_quantity=canonical(max(rules.min_quantity, rules.increment)),
        min_notional=canonical(rules.min_notional),
        increment=canonical(rules.increment),
    )
