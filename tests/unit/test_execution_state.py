from __future__ import annotations

from decimal import Decimal

import pytest

from models.domain.execution_state import ExecutionStatus, settle

D = Decimal


@pytest.mark.parametrize(
    ("broker_status", "filled", "status", "unfilled"),
    [
        ("filled", D(5), ExecutionStatus.FILLED, D(0)),
        ("new", D(0), ExecutionStatus.SUBMITTED, D(0)),
        ("partially_filled", D(2), ExecutionStatus.SUBMITTED, D(0)),  # still working at the broker
        ("canceled", D(2), ExecutionStatus.PARTIALLY_FILLED, D(3)),
        ("expired", D(0), ExecutionStatus.CANCELLED, D(5)),
        ("rejected", D(0), ExecutionStatus.REJECTED, D(5)),
        ("some_new_status", D(0), ExecutionStatus.SUBMITTED, D(0)),  # unknown is not evidence of an end
        # No more updates today, but not final: the next session settles it (Alpaca's order docs).
        ("done_for_day", D(0), ExecutionStatus.SUBMITTED, D(0)),
        ("done_for_day", D(2), ExecutionStatus.SUBMITTED, D(0)),
        ("calculated", D(2), ExecutionStatus.SUBMITTED, D(0)),
        # A replaced order lives on in its replaced_by order: its 0 filled is not the outcome.
        ("replaced", D(0), ExecutionStatus.SUBMITTED, D(0)),
    ],
)
def test_settle_maps_broker_answers(
    broker_status: str, filled: Decimal, status: ExecutionStatus, unfilled: Decimal
) -> None:
    settlement = settle(broker_status, D(5), filled)
    assert (settlement.status, settlement.unfilled) == (status, unfilled)


def test_settle_refuses_an_overfill() -> None:
    with pytest.raises(ValueError, match="6 filled of 5"):
        settle("filled", D(5), D(6))
