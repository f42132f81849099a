"""Dust (SPEC 1.3): which part of a lot is dust, and when an aggregate of dust may be sold.

The one owner of these decisions. What a venue accepts (increment, minimum quantity,
minimum notional) is ``VenueRules``; this module decides what to do about what it refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum
from typing import NamedTuple

from models.domain.quantities import ONE, ZERO, canonical
from models.domain.venue import VenueRules

PENDING_NOTE = "Below minimum quantity, waiting for additional quantity"


class AggregateStatus(StrEnum):
    PENDING = "dust_pending"
    READY = "dust_ready"


class DustSplit(NamedTuple):  # a tuple: one per lot and scan, cheap to build
    """``keep`` stays in the lot (a tradable quantity); ``dust`` goes to the aggregate."""

    keep: Decimal
    dust: Decimal


def split_dust(quantity: Decimal, rules: VenueRules, price: Decimal | None) -> DustSplit:
    """A lot below the minimum quantity or notional is dust as a whole; a tradable lot that is
    not a multiple of the increment keeps its tradable part and only the rest is dust (a dust
    scan must never sell a real position for its fractional tail). Without a price the
    notional minimum is not applied: unknown is not dust."""
    if quantity <= 0:
        return DustSplit(ZERO, ZERO)  # an empty lot (position gone): nothing to sweep
    tradable, remainder = rules.round_down(quantity)
    if _below_minimum(tradable, rules, price):
        return DustSplit(ZERO, quantity)
    return DustSplit(tradable, remainder)


def _below_minimum(quantity: Decimal, rules: VenueRules, price: Decimal | None) -> bool:
    if rules.below_minimum_quantity(quantity):
        return True
    return price is not None and rules.below_minimum_notional(quantity, price)


@dataclass(frozen=True)
class Readiness:
    status: AggregateStatus
    sell_quantity: Decimal  # the tradable part (a multiple of the increment); 0 while pending
    note: str


def aggregate_readiness(
    quantity: Decimal,
    rules: VenueRules,
    price: Decimal | None,
    current: AggregateStatus,
    hysteresis: Decimal,
) -> Readiness:
    """Pending until the tradable part reaches the venue's minimums, then ready.

    The notional minimum has a band of ``hysteresis`` on both sides: a pending aggregate
    becomes ready at ``min_notional * (1 + h)`` and a ready one falls back only below
    ``min_notional * (1 - h)``, so a price wobbling around the minimum does not flip it every
    cycle. Quantity minimums do not move with the price and have no band.
    """
    tradable, _ = rules.round_down(quantity)
    if rules.below_minimum_quantity(tradable):
        return Readiness(AggregateStatus.PENDING, ZERO, PENDING_NOTE)
    if rules.min_notional > 0:
        if price is None:  # no news is no change
            kept = tradable if current is AggregateStatus.READY else ZERO
            return Readiness(current, kept, "No price: the notional minimum cannot be checked")
        band = ONE + hysteresis if current is AggregateStatus.PENDING else ONE - hysteresis
        if rules.below_minimum_notional(tradable, price, band):
            note = f"Below minimum notional {canonical(rules.min_notional)}, waiting for additional quantity"
            return Readiness(AggregateStatus.PENDING, ZERO, note)
    return Readiness(AggregateStatus.READY, tradable, f"Ready: {canonical(tradable)} to sell by the next scan")


def sale_refusal(quantity: Decimal, rules: VenueRules, price: Decimal | None) -> str | None:
    """Why a ready aggregate may not be sold right now: the venue's own verdict at this price.

    Inside the lower half of the hysteresis band an aggregate stays ready but waits."""
    if price is None:
        return "no price to check the notional minimum" if rules.min_notional > 0 else rules.refusal(quantity, ZERO)
    return rules.refusal(quantity, price)


def top_up_to_sellable(held: Decimal, price: Decimal, rules: VenueRules) -> Decimal | None:
    """The smallest buy after which the whole position can be sold again (normalization's
    consolidation, SPEC 1.4): 0 when it already can, None when no buy can make it so (a
    fractional holding on a whole-share venue, a venue that trades nothing, no price)."""
    if price <= 0 or not rules.tradable:
        return None
    if rules.refusal(held, price) is None:
        return ZERO
    if held % rules.increment != 0:
        return None
    floor = max(rules.min_quantity, rules.increment)
    if rules.min_notional > 0:
        floor = max(floor, _round_up(rules.min_notional / price, rules.increment))
    # Both orders must pass the venue: the buy itself and the consolidated position's sale.
    buy = _round_up(floor - held, rules.increment)
    while rules.refusal(buy, price) is not None or rules.refusal(held + buy, price) is not None:
        buy += rules.increment
        if buy > floor * 2:  # a buy's own minimum is at most the floor: past twice it, give up
            return None
    return buy


def _round_up(quantity: Decimal, increment: Decimal) -> Decimal:
    steps = (quantity / increment).to_integral_value(rounding=ROUND_CEILING)
    return max(steps, ONE) * increment
