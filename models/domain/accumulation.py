"""Per-symbol netting of fractional quantities into whole-share executions (SPEC 1.1).

The net of a symbol is the sum of its *open portions*: the parts of accumulated trades
(and of unfilled shares put back after a partial fill or rejection) that no execution has
taken yet. When |net| reaches the threshold, one execution takes the whole part of |net|
from those portions; the portions it takes are its contributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from models.domain.quantities import ZERO, Side, split_whole_and_fraction


@dataclass(frozen=True)
class Portion:
    """An open, signed quantity waiting in a symbol's net: from a trade or an execution return."""

    kind: str  # "trade" | "return"
    ref: str  # the trade id, or the return id as text
    quantity: Decimal  # signed, never zero


@dataclass(frozen=True)
class Allocation:
    portion: Portion
    taken: Decimal  # signed, same sign as the portion, |taken| <= |portion.quantity|

    @property
    def left(self) -> Decimal:
        return self.portion.quantity - self.taken


@dataclass(frozen=True)
class PlannedExecution:
    side: Side
    quantity: Decimal  # whole shares, > 0
    allocations: tuple[Allocation, ...]

    @property
    def signed_quantity(self) -> Decimal:
        return self.quantity if self.side is Side.BUY else -self.quantity


def crosses_threshold(net: Decimal, threshold: Decimal) -> bool:
    """Whether a net calls for an execution: |net| >= threshold, either direction (SPEC 1.1).

    The one owner of the rule; ``tasks.sweeps`` states it again in SQL to find such nets."""
    return abs(net) >= threshold


def plan_execution(portions: Sequence[Portion], threshold: Decimal) -> PlannedExecution | None:
    """The one execution the open portions call for, or None while |net| < threshold.

    Portions of the opposite sign are taken whole (they offset), then portions of the
    execution's sign in the given (FIFO) order until the whole quantity is reached; the
    last one may be split. Whatever is left open has the sign of the net and sums to the
    fractional residual.
    """
    net = sum((p.quantity for p in portions), ZERO)
    if not crosses_threshold(net, threshold):
        return None
    whole, _residual = split_whole_and_fraction(net)
    if whole == 0:
        return None
    side = Side.BUY if net > 0 else Side.SELL
    target = whole * side.sign
    allocations = [Allocation(p, p.quantity) for p in portions if p.quantity * side.sign < 0]
    still_needed = target - sum((a.taken for a in allocations), ZERO)
    for portion in portions:
        if still_needed == 0:
            break
        if portion.quantity * side.sign <= 0:
            continue
        taken = portion.quantity if abs(portion.quantity) <= abs(still_needed) else still_needed
        allocations.append(Allocation(portion, taken))
        still_needed -= taken
    assert still_needed == 0, "open portions do not add up to the net"
    return PlannedExecution(side=side, quantity=whole, allocations=tuple(allocations))
