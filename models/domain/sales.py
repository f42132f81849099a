"""Notional sales (SPEC 1.8): "sell 100.00 USD of AAPL" becomes the largest tradable quantity;
what the quantity cannot carry is the sale's dust, and requested = proceeds + dust exactly."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal

from models.domain.venue import VenueRules

CENT = Decimal("0.01")


@dataclass(frozen=True)
class SaleQuote:
    requested: Decimal
    price: Decimal
    quantity: Decimal
    proceeds: Decimal
    dust: Decimal
    cap: Decimal  # 0: no cap
    nearest_below: Decimal | None  # largest notional <= requested whose dust fits the cap
    nearest_above: Decimal | None  # smallest notional >= requested whose dust fits the cap

    @property
    def within_cap(self) -> bool:
        return self.cap == 0 or self.dust <= self.cap


def quote_sale(requested: Decimal, price: Decimal, rules: VenueRules, cap: Decimal) -> SaleQuote:
    if requested <= 0 or price <= 0:
        raise ValueError("notional and price must be positive")
    quantity, _ = rules.round_down(requested / price)
    proceeds = quantity * price
    dust = requested - proceeds
    lot_value = rules.increment * price
    below = above = None
    if cap == 0 or dust <= cap:
        below = above = requested
    else:
        # Between proceeds and proceeds + cap the dust fits; the next lot up has none.
        if quantity > 0:
            below = (proceeds + cap).quantize(CENT, rounding=ROUND_DOWN)
        above = (proceeds + lot_value).quantize(CENT, rounding=ROUND_UP)
    return SaleQuote(requested, price, quantity, proceeds, dust, cap, below, above)
