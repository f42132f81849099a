"""What a settled sale leaves behind: a dust sale's aggregate becomes ``sold`` (whatever did not
sell stays tracked), and a notional sale's fill is written to the dust ledger.

Called from the execution's settlement transaction (``tasks.exits.settle_position_order``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.domain.quantities import canonical
from models.tables import DustLedger, Execution
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


def align_aggregate_with_position(session: Session, execution: Execution, held: Decimal, now: datetime) -> None:
    """An exit sold shares a waiting dust aggregate also tracks: the aggregate keeps no more than
    the position still holds, and is ``sold`` once the exit took them all. A ``selling`` aggregate
    is left to its own sale's settlement."""
    if execution.filled_quantity <= 0:
        return
    # Locked like the dust scan locks live aggregates: one of the two changes it at a time.
    aggregate = session.scalars(
        select(Lot)
        .where(
            Lot.account == execution.account,
            Lot.symbol == execution.symbol,
            Lot.kind == "aggregate",
            Lot.status.in_(("dust_pending", "dust_ready")),
        )
        .with_for_update()
    ).one_or_none()
    kept = max(held, Decimal(0))
    if aggregate is None or aggregate.quantity <= kept:
        return
    by = f"{execution.source} {execution.id}"
    if kept == 0:
        aggregate.status = "sold"
        aggregate.note = f"Sold by {by}"
    else:
        aggregate.note = f"Reduced from {canonical(aggregate.quantity)} to {canonical(kept)} by {by}"
        aggregate.quantity = kept
    aggregate.updated_at = now


def ledger_filled_sale(session: Session, execution: Execution, now: datetime) -> None:
    """The ledger records what the brokerage filled (SPEC 1.8): nothing for a rejected or cancelled
    sale, the real proceeds of a partial fill with the quoted value of what did not fill. Once per
    sale: the execution id is unique in the ledger, so a settlement run twice writes one row."""
    if execution.filled_quantity <= 0 or execution.average_price is None or execution.requested_notional is None:
        return
    quoted_price = execution.quoted_price or execution.average_price
    proceeds = execution.filled_quantity * execution.average_price
    session.execute(
        insert(DustLedger)
        .values(
            execution_id=execution.id,
            account=execution.account,
            symbol=execution.symbol,
            requested_notional=execution.requested_notional,
            price=execution.average_price,
            quantity=execution.filled_quantity,
            proceeds=proceeds,
            dust=execution.requested_notional - execution.quantity * quoted_price,
            unfilled_notional=(execution.quantity - execution.filled_quantity) * quoted_price,
            slippage=execution.filled_quantity * quoted_price - proceeds,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["execution_id"])
    )
