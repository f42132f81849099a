"""A position under average-cost accounting, and the P&L a reducing fill realises."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from models.domain.quantities import ZERO

PRICE_SCALE = Decimal(1).scaleb(-18)


@dataclass(frozen=True)
class Holding:
    quantity: Decimal  # signed: a short hedge position is negative
    average_price: Decimal | None


@dataclass(frozen=True)
class FillEffect:
    holding: Holding
    realized_quantity: Decimal  # shares closed by this fill (>= 0)
    realized_pnl: Decimal


def apply_fill(holding: Holding, signed_quantity: Decimal, price: Decimal) -> FillEffect:
    """Average cost: adding keeps a weighted average; reducing realises (price - average) per share."""
    current, average = holding.quantity, holding.average_price
    if current == 0 or (current > 0) == (signed_quantity > 0):
        total = current + signed_quantity
        new_average = (current * (average or ZERO) + signed_quantity * price) / total
        # A weighted average need not terminate: round it, explicitly, to the column's scale.
        new_average = new_average.quantize(PRICE_SCALE, rounding=ROUND_HALF_EVEN)
        return FillEffect(Holding(total, new_average), ZERO, ZERO)
    closed = min(abs(signed_quantity), abs(current))
    direction = 1 if current > 0 else -1
    pnl = (price - (average or price)) * closed * direction
    remaining = current + signed_quantity
    if remaining == 0:
        return FillEffect(Holding(ZERO, None), closed, pnl)
    if (remaining > 0) == (current > 0):
        return FillEffect(Holding(remaining, average), closed, pnl)
    return FillEffect(Holding(remaining, price), closed, pnl)  # flipped sides: new cost basis


def remainder_is_dust(quantity: Decimal, price: Decimal, min_position_value: Decimal) -> bool:
    """A remainder worth less than the minimum position value (0 disables) is closed as dust."""
    return min_position_value > 0 and quantity > 0 and quantity * price < min_position_value
