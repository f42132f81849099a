"""Execution statuses and how a broker's order answer maps onto them (SPEC 1.2)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from models.domain.quantities import ZERO


class ExecutionStatus(StrEnum):
    PENDING = "pending"  # created, not yet known to the broker
    SUBMITTED = "submitted"  # the broker has the order and it is still working
    PARTIALLY_FILLED = "partially_filled"  # final: part filled, the rest was put back
    FILLED = "filled"
    REJECTED = "rejected"  # final: nothing filled, everything put back
    CANCELLED = "cancelled"  # final: nothing filled, everything put back

    @property
    def in_flight(self) -> bool:
        return self in (ExecutionStatus.PENDING, ExecutionStatus.SUBMITTED)


# Alpaca order statuses that mean the order can still fill. ``done_for_day`` and ``calculated``
# get no more updates today but are not final: the next session's answer settles them.
# ``replaced`` lives on in its ``replaced_by`` order, which the caller follows (never re-orders).
WORKING_BROKER_STATUSES = frozenset(
    {
        "new",
        "done_for_day",
        "replaced",
        "accepted",
        "pending_new",
        "accepted_for_bidding",
        "partially_filled",
        "pending_cancel",
        "pending_replace",
        "held",
        "calculated",
        "stopped",
        "suspended",
    }
)


@dataclass(frozen=True)
class Settlement:
    status: ExecutionStatus
    unfilled: Decimal  # shares to put back into the accounting (0 while working or when filled)


def settle(broker_status: str, quantity: Decimal, filled: Decimal) -> Settlement:
    """Our status for a broker order that has ``filled`` of ``quantity`` shares.

    A terminal order that is not completely filled puts the unfilled shares back: a
    partial fill ends as ``partially_filled`` and a rejection or cancellation with no
    fill as ``rejected`` / ``cancelled``. Unknown statuses count as working, since a
    timeout or an unfamiliar answer is not evidence that the order is over.
    """
    if filled < ZERO or filled > quantity:
        raise ValueError(f"broker reports {filled} filled of {quantity}")
    if broker_status == "filled" or filled == quantity:
        return Settlement(ExecutionStatus.FILLED, ZERO)
    if broker_status in WORKING_BROKER_STATUSES or broker_status not in TERMINAL_BROKER_STATUSES:
        return Settlement(ExecutionStatus.SUBMITTED, ZERO)
    if filled > ZERO:
        return Settlement(ExecutionStatus.PARTIALLY_FILLED, quantity - filled)
    if broker_status == "rejected":
        return Settlement(ExecutionStatus.REJECTED, quantity)
    return Settlement(ExecutionStatus.CANCELLED, quantity)


TERMINAL_BROKER_STATUSES = frozenset({"filled", "canceled", "cancelled", "expired", "rejected"})
