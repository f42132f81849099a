"""What a settled dust sale does to its aggregate: ``sold``, and whatever did not sell stays tracked.

Called from the execution's settlement transaction (``tasks.exits.settle_position_order``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.domain.quantities import canonical
from models.tables import Execution
from models.tables_ops import Lot


def settle_dust_sale(session: Session, execution: Execution, now: datetime) -> None:
    """The aggregate becomes ``sold``; the part not filled (an unfilled order, a partial fill, or
    the sub-increment rest the sale could not carry) becomes a new open holding lot that the next
    scans aggregate again. Idempotent: an aggregate already settled is left alone."""
    # Locked: the dust scan changes live aggregates too, and must not see this one half settled.
    aggregate = session.scalars(
        select(Lot).where(Lot.execution_id == execution.id, Lot.kind == "aggregate").with_for_update()
    ).one_or_none()
    if aggregate is None or aggregate.status != "selling":
        return
    left = aggregate.quantity - execution.filled_quantity
    aggregate.status = "sold"
    sold, of = canonical(execution.filled_quantity), canonical(aggregate.quantity)
    aggregate.note = f"Sold {sold} of {of} ({execution.status})"
    aggregate.updated_at = now
    if left > 0:
        session.add(
            Lot(
                account=aggregate.account,
                symbol=aggregate.symbol,
                kind="holding",
                source="remainder",
                quantity=left,
                price=execution.average_price or aggregate.price,
                status="open",
                note=f"Not sold by dust aggregate #{aggregate.id} (execution {execution.id})",
                created_at=now,
                updated_at=now,
            )
        )
