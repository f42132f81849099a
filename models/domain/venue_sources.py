"""Where a symbol's venue rules come from: the broker's asset data, then a config override.

Pure mapping; ``tasks.venues.venue_rules_for`` is the one place that combines them with the
synced rows, and ``VenueRules`` the one place that says what the venue then accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from models.domain.quantities import ONE, ZERO
from models.domain.venue import VenueRules

# Alpaca trades fractional shares to 9 decimals when an asset gives no increment of its own.
FRACTIONAL_STEP = Decimal("0.000000001")


@dataclass(frozen=True)
class RuleOverride:
    """A per-symbol override from the config file; None leaves the synced value alone."""

    whole_shares: bool | None = None
    step: Decimal | None = None
    min_quantity: Decimal | None = None
    min_notional: Decimal | None = None


def rules_from_asset(
    *,
    tradable: bool,
    fractionable: bool,
    min_order_size: Decimal | None,
    min_trade_increment: Decimal | None,
) -> VenueRules:
    """Alpaca's asset fields: ``fractionable=false`` means whole shares, ``min_order_size`` is the
    minimum quantity, ``min_trade_increment`` the step. Assets carry no minimum notional (0)."""
    if min_trade_increment is not None and min_trade_increment > 0:
        step = min_trade_increment
    else:
        step = ONE if not fractionable else FRACTIONAL_STEP
    return VenueRules(
        whole_shares=not fractionable,
        step=step,
        min_quantity=min_order_size if min_order_size is not None and min_order_size > 0 else ZERO,
        min_notional=ZERO,
        tradable=tradable,
    )


def apply_override(rules: VenueRules, override: RuleOverride | None) -> VenueRules:
    """The override wins field by field; a field it leaves unset keeps the synced value."""
    if override is None:
        return rules
    return replace(
        rules,
        whole_shares=rules.whole_shares if override.whole_shares is None else override.whole_shares,
        step=rules.step if override.step is None else override.step,
        min_quantity=rules.min_quantity if override.min_quantity is None else override.min_quantity,
        min_notional=rules.min_notional if override.min_notional is None else override.min_notional,
    )
