"""An incoming upstream fill and its content fingerprint (duplicate vs conflict)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from models.domain.quantities import Side, canonical, signed


@dataclass(frozen=True)
class IncomingTrade:
    id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    executed_at: datetime

    @property
    def signed_quantity(self) -> Decimal:
        return signed(self.side, self.quantity)

    def content_hash(self) -> str:
        """Same trade, same hash: "1.50" vs "1.5" or another time zone spelling do not differ."""
        fields = (
            self.id,
            self.symbol,
            self.side.value,
            canonical(self.quantity),
            canonical(self.price),
            self.executed_at.astimezone(UTC).isoformat(),
        )
        return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()
