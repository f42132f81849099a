"""Tables of the incremental audit: running totals, verified checkpoints, the verifier's pass.

The running totals are written by statement triggers (migration 0007) in the same transaction
as the rows they sum, so every writer keeps them exact without calling anything. Triggers
append to ``symbol_total_deltas`` instead of updating one row per symbol: no writer ever waits
on another's total, and no new lock order can deadlock. ``tasks.totals.fold_deltas`` folds
the deltas into ``symbol_totals`` now and then. The schema is owned by Alembic migrations.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, Identity, Integer, Numeric, String, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.tables import Base

# Sums over any number of rows, each up to numeric(38, 18): a bounded type would overflow on
# sums a user can send (two trades just under 10^20 in one webhook), so no precision limit.
TOTAL = Numeric()


class SymbolTotals(Base):
    """Per symbol, folded: signed applied trades, filled hedges, in-flight hedges, returned shares."""

    __tablename__ = "symbol_totals"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    trades_applied: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    filled: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    in_flight: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    returned: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class SymbolTotalDelta(Base):
    """One statement's change to a symbol's totals, not folded yet (append-only, lock-free)."""

    __tablename__ = "symbol_total_deltas"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32))
    trades_applied: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    filled: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    in_flight: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    returned: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")


class _BookTotalsColumns:
    """Per kind (trade, execution, ledger), symbol, side and status: rows and their sums."""

    kind: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    status: Mapped[str] = mapped_column(String(16))
    row_count: Mapped[int] = mapped_column(BigInteger, server_default="0")
    quantity: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    filled: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    proceeds: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    dust: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")


class BookTotals(_BookTotalsColumns, Base):
    """What the report shows (trades by status, executions, the dust ledger), folded."""

    __tablename__ = "book_totals"
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    side: Mapped[str] = mapped_column(String(4), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)


class BookTotalDelta(_BookTotalsColumns, Base):
    """One statement's change to the book totals, not folded yet."""

    __tablename__ = "book_total_deltas"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)


class AuditCheckpoint(Base):
    """What the verifier last proved from the rows: sums of every settled row up to a seq.

    Rows at or below the checkpoint were settled (a trade applied or rejected, an execution
    no longer in flight) when verified; the audit re-reads only the rows above it. ``archived_*``
    are the sums of rows moved out by retention, carried here so the books stay whole.
    """

    __tablename__ = "audit_checkpoints"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    trade_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    execution_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    trades_applied: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    filled: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    archived_trades_applied: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    archived_filled: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    problems: Mapped[str | None]  # what the last pass found wrong in old rows, one per line
    verified_at: Mapped[datetime | None]


class AuditVerifierPass(Base):
    """The one background verifier pass under way (or the last one): where it stands."""

    __tablename__ = "audit_verifier"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime | None]
    # A transaction that drew a seq up to the targets had its id below this: the walk waits for them.
    start_xid: Mapped[int | None] = mapped_column(BigInteger)
    trade_target: Mapped[int] = mapped_column(BigInteger, server_default="0")
    execution_target: Mapped[int] = mapped_column(BigInteger, server_default="0")
    trade_cursor_symbol: Mapped[str | None] = mapped_column(String(32))
    trade_cursor_seq: Mapped[int | None] = mapped_column(BigInteger)
    execution_cursor_symbol: Mapped[str | None] = mapped_column(String(32))
    execution_cursor_seq: Mapped[int | None] = mapped_column(BigInteger)
    trades_done: Mapped[bool] = mapped_column(server_default="false")
    executions_done: Mapped[bool] = mapped_column(server_default="false")
    passes: Mapped[int] = mapped_column(Integer, server_default="0")
    last_finished_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class AuditVerifierSums(Base):
    """Per symbol sums of the pass under way; a limit stops a symbol below its first unsettled row."""

    __tablename__ = "audit_verifier_sums"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    trades_applied: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    filled: Mapped[Decimal] = mapped_column(TOTAL, server_default="0")
    trade_limit: Mapped[int | None] = mapped_column(BigInteger)
    execution_limit: Mapped[int | None] = mapped_column(BigInteger)
    problems: Mapped[str | None]


class ArchivedTrade(Base):
    """A trade moved out of ``trades`` by retention, as it was; its sums live on in the checkpoint."""

    __tablename__ = "archived_trades"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    quantity: Mapped[Decimal]
    price: Mapped[Decimal]
    executed_at: Mapped[datetime]
    received_at: Mapped[datetime]
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str | None]
    accumulated_at: Mapped[datetime | None]
    open_quantity: Mapped[Decimal]
    archived_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ArchivedContribution(Base):
    """A contribution of an archived trade, moved with it; executions stay where they are."""

    __tablename__ = "archived_contributions"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    trade_id: Mapped[str | None] = mapped_column(String(128))
    return_id: Mapped[int | None] = mapped_column(BigInteger)
    quantity: Mapped[Decimal]
