"""Refusals shared by every flow that sells: why an order may not be placed, as a 4xx."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from models.domain.symbols import is_restricted
from models.tables import SymbolFreeze


class Refused(Exception):
    """A request the operator sent that cannot be carried out; nothing was written."""

    def __init__(self, status: int, error: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
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
        raise Refused(422, "unknown_account", f"account {account!r} is not configured")
    if is_restricted(symbol, policy.restricted_symbols):
        raise Refused(422, "symbol_restricted", f"{symbol} is restricted and never traded")
    freeze = session.get(SymbolFreeze, symbol)
    if freeze is not None:
        raise Refused(409, "symbol_frozen", f"{symbol} is frozen: {freeze.reason}")
