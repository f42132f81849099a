"""Venue rules: what quantity a venue accepts for a symbol (the one owner of these checks)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

from models.domain.quantities import ONE, ZERO, canonical


@dataclass(frozen=True)
class VenueRules:
    whole_shares: bool = True
    step: Decimal = ONE  # smallest increment when fractional shares are allowed
    min_quantity: Decimal = ZERO
    min_notional: Decimal = ZERO
    tradable: bool = True  # False: the venue takes no order at all for the symbol

    @property
    def increment(self) -> Decimal:
        return ONE if self.whole_shares else self.step

    def round_down(self, quantity: Decimal) -> tuple[Decimal, Decimal]:
        """The largest tradable multiple of the increment <= quantity, and what is left over."""
        if quantity <= 0:
            return ZERO, quantity
        steps = (quantity / self.increment).to_integral_value(rounding=ROUND_DOWN)
        tradable = steps * self.increment
        return tradable, quantity - tradable

    def below_minimum_quantity(self, quantity: Decimal) -> bool:
        return quantity <= 0 or quantity < self.min_quantity

    def below_minimum_notional(self, quantity: Decimal, price: Decimal, band: Decimal = ONE) -> bool:
        """``quantity * price < min_notional * band``; ``band`` widens or narrows the minimum
        (the dust scan's hysteresis), 1 for the venue's own verdict."""
        return quantity * price < self.min_notional * band

    def refusal(self, quantity: Decimal, price: Decimal) -> str | None:
        """Why the venue would refuse this quantity at this price, or None if it accepts it."""
        if not self.tradable:
            return "the venue does not trade this symbol"
        if quantity <= 0:
            return "quantity is below one tradable increment"
        if quantity % self.increment != 0:
            return f"quantity must be a multiple of {canonical(self.increment)}"
        if self.below_minimum_quantity(quantity):
            return f"quantity is below the minimum {canonical(self.min_quantity)}"
        if self.below_minimum_notional(quantity, price):
            return f"notional is below the minimum {canonical(self.min_notional)}"
        return None
