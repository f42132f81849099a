"""The PostgreSQL tables (SQLAlchemy 2 typed). The schema itself is owned by Alembic migrations."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TRADE_STATUSES = ("received", "accumulated", "rejected")
EXECUTION_STATUSES = ("pending", "submitted", "partially_filled", "filled", "rejected", "cancelled")
# hedge: nets of upstream trades; sell: notional sales; exit: position exits; dust_cleanup: a remainder closed
# consolidate: a normalization buy that tops a small position up to a sellable quantity
EXECUTION_SOURCES = ("hedge", "sell", "exit", "dust_cleanup", "dust_sale", "broker_cleanup", "consolidate")
# manual: an operator; rejections: orders kept failing; prices: the price feed kept failing
FREEZE_SOURCES = ("manual", "rejections", "prices")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        Decimal: Numeric(38, 18),
        datetime: DateTime(timezone=True),
        str: Text,
    }


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Trade(Base):
    """The durable inbox: every upstream fill, stored once under its upstream id."""

    __tablename__ = "trades"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity())
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    quantity: Mapped[Decimal]
    price: Mapped[Decimal]
    executed_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), server_default="received")
    status_reason: Mapped[str | None]
    accumulated_at: Mapped[datetime | None]
    # Signed part of this trade that no execution has taken yet (0 until accumulated).
    open_quantity: Mapped[Decimal] = mapped_column(server_default="0")

    __table_args__ = (
        CheckConstraint("side IN ('buy', 'sell')", name="side"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("price > 0", name="price_positive"),
        CheckConstraint(_in("status", TRADE_STATUSES), name="status"),
        CheckConstraint("abs(open_quantity) <= quantity", name="open_within_quantity"),
        CheckConstraint("open_quantity = 0 OR (side = 'buy') = (open_quantity > 0)", name="open_has_trade_sign"),
        CheckConstraint("status = 'accumulated' OR open_quantity = 0", name="open_only_when_accumulated"),
        Index("ix_trades_waiting", "symbol", "seq", postgresql_where=text("status = 'received'")),
        Index("ix_trades_open", "symbol", "seq", postgresql_where=text("open_quantity <> 0")),
        # The audit reads each symbol's trades above its checkpoint; the verifier walks this order.
        Index("ix_trades_symbol_seq", "symbol", "seq"),
        # `dustpan up`'s last-minute latency percentiles (workers/up_status.py).
        Index("ix_trades_accumulated_at", "accumulated_at", postgresql_where=text("accumulated_at IS NOT NULL")),
    )


class Accumulator(Base):
    """Per-symbol net of accumulated quantity not yet taken by an execution."""

    __tablename__ = "accumulators"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    net_quantity: Mapped[Decimal] = mapped_column(server_default="0")
    last_price: Mapped[Decimal | None]  # price of the latest accumulated trade
    consecutive_rejections: Mapped[int] = mapped_column(Integer, server_default="0")
    # After a rejection no new execution is created before this time (backoff).
    hold_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint("consecutive_rejections >= 0", name="rejections_non_negative"),)


class Execution(Base):
    """A whole-share order for the brokerage, created in the same transaction as its contributions."""

    __tablename__ = "executions"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    quantity: Mapped[Decimal]
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    client_order_id: Mapped[str] = mapped_column(String(64), unique=True)
    broker_order_id: Mapped[str | None] = mapped_column(String(64))
    filled_quantity: Mapped[Decimal] = mapped_column(server_default="0")
    average_price: Mapped[Decimal | None]
    submit_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # Broker answers in a row that said nothing about the order (timeouts, 5xx, 4xx on a lookup).
    unknown_outcomes: Mapped[int] = mapped_column(Integer, server_default="0")
    # Claims taken on it, ever: only a claim leads to a POST, so the first one needs no lookup.
    claims: Mapped[int] = mapped_column(Integer, server_default="0")
    # The worker calling the broker for it, and until when that claim holds (tasks.execution).
    claimed_by: Mapped[str | None]
    claimed_until: Mapped[datetime | None]
    # Waiting with no message on its way: turned away by its symbol's limit of calls under way,
    # or beyond what a dead node's rescue re-sent (tasks.sweeps). The next claim of its symbol
    # sees it and wakes it when its call ends (tasks.execution ``_waiting``).
    waiting_since: Mapped[datetime | None]
    last_error: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    submitted_at: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(16), server_default="hedge")
    account: Mapped[str] = mapped_column(String(64), server_default="default")
    # The exit whose remainder a dust_cleanup closes.
    parent_execution_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("executions.id"))
    reason: Mapped[str | None]  # what the operator gave for an exit
    # A notional sale's quote, kept until it fills: the dust ledger row is written from the fill.
    requested_notional: Mapped[Decimal | None]
    quoted_price: Mapped[Decimal | None]

    __table_args__ = (
        CheckConstraint("side IN ('buy', 'sell')", name="side"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        # Hedges go to the whole-share venue; sales and exits follow the symbol's venue rules.
        CheckConstraint("source <> 'hedge' OR quantity = trunc(quantity)", name="hedges_whole_shares"),
        CheckConstraint(_in("source", EXECUTION_SOURCES), name="source"),
        CheckConstraint(_in("status", EXECUTION_STATUSES), name="status"),
        CheckConstraint("filled_quantity >= 0 AND filled_quantity <= quantity", name="filled_within_quantity"),
        CheckConstraint("status <> 'filled' OR filled_quantity = quantity", name="filled_means_all"),
        CheckConstraint("status NOT IN ('rejected', 'cancelled') OR filled_quantity = 0", name="unfilled_ends_empty"),
        CheckConstraint("average_price IS NULL OR average_price > 0", name="average_price_positive"),
        Index(
            "ix_executions_open",
            "status",
            "updated_at",
            postgresql_where=text("status IN ('pending', 'submitted')"),
        ),
        Index("ix_executions_symbol_seq", "symbol", "seq"),
        Index("ix_executions_submitted_at", "submitted_at", postgresql_where=text("submitted_at IS NOT NULL")),
    )


class ExecutionReturn(Base):
    """Unfilled shares of a finished execution, put back into the symbol's net, with why."""

    __tablename__ = "execution_returns"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("executions.id"), unique=True)
    symbol: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[Decimal]  # signed like the execution
    open_quantity: Mapped[Decimal]  # signed part not yet taken by a later execution
    reason: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("quantity <> 0", name="quantity_non_zero"),
        CheckConstraint(
            "abs(open_quantity) <= abs(quantity) AND (open_quantity = 0 OR sign(open_quantity) = sign(quantity))",
            name="open_within_quantity",
        ),
        Index("ix_execution_returns_open", "symbol", "id", postgresql_where=text("open_quantity <> 0")),
    )


class Contribution(Base):
    """Quantity an execution took from a trade (or from a return); a trade may feed several."""

    __tablename__ = "contributions"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("executions.id"), index=True)
    trade_id: Mapped[str | None] = mapped_column(ForeignKey("trades.id"), index=True)
    return_id: Mapped[int | None] = mapped_column(ForeignKey("execution_returns.id"))
    quantity: Mapped[Decimal]  # signed

    __table_args__ = (
        CheckConstraint("quantity <> 0", name="quantity_non_zero"),
        CheckConstraint("(trade_id IS NULL) <> (return_id IS NULL)", name="one_source"),
    )


class ContributionOrigin(Base):
    """The trades behind shares a re-execution took from a return: the lineage survives rejections."""

    __tablename__ = "contribution_origins"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("executions.id"), index=True)
    return_id: Mapped[int] = mapped_column(ForeignKey("execution_returns.id"), index=True)
    trade_id: Mapped[str] = mapped_column(ForeignKey("trades.id"), index=True)
    quantity: Mapped[Decimal]  # signed

    __table_args__ = (CheckConstraint("quantity <> 0", name="quantity_non_zero"),)


class SymbolFreeze(Base):
    """A symbol that must not be ordered: frozen by an operator or after repeated rejections."""

    __tablename__ = "symbol_freezes"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    reason: Mapped[str]
    source: Mapped[str] = mapped_column(String(16))
    frozen_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (CheckConstraint(_in("source", FREEZE_SOURCES), name="source"),)


class PaperOrder(Base):
    """The paper brokerage's own order book (the far side, kept in the same database)."""

    __tablename__ = "paper_orders"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    client_order_id: Mapped[str] = mapped_column(String(128), unique=True)
    account: Mapped[str] = mapped_column(String(64), server_default="default")
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[Decimal]
    status: Mapped[str] = mapped_column(String(24))
    filled_qty: Mapped[Decimal] = mapped_column(server_default="0")
    filled_avg_price: Mapped[Decimal | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("qty > 0", name="qty_positive"),
        CheckConstraint("filled_qty >= 0 AND filled_qty <= qty", name="filled_within_qty"),
    )


class PaperOrderRequest(Base):
    """Every order request the paper brokerage received, accepted or not: proof of no re-POST."""

    __tablename__ = "paper_order_requests"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    client_order_id: Mapped[str] = mapped_column(String(128), index=True)
    outcome: Mapped[str] = mapped_column(String(24))
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Position(Base):
    """The position book per account and symbol, moved by every fill (average cost)."""

    __tablename__ = "positions"
    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(server_default="0")  # negative when short
    average_price: Mapped[Decimal | None]
    # dust_orphaned: a remainder whose closing order failed, left for the cleanup job.
    status: Mapped[str] = mapped_column(String(16), server_default="open")
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("status IN ('open', 'dust_orphaned')", name="status"),
        CheckConstraint("average_price IS NULL OR average_price > 0", name="average_price_positive"),
    )


class RealizedPnl(Base):
    """Profit or loss realised by a reducing fill of a sale, an exit or a dust cleanup."""

    __tablename__ = "realized_pnl"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    execution_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("executions.id"), index=True)  # one row per fill
    # For dust_cleanup: the exit whose fill left the remainder.
    related_execution_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("executions.id"))
    quantity: Mapped[Decimal]
    entry_price: Mapped[Decimal]
    exit_price: Mapped[Decimal]
    pnl: Mapped[Decimal]
    # The exit's own reason, or sale, dust_cleanup, dust_sale, broker_cleanup (SPEC 1.10).
    reason: Mapped[str]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("length(reason) > 0", name="reason"),
        CheckConstraint("pnl = (exit_price - entry_price) * quantity", name="pnl_is_exact"),
    )


class DustLedger(Base):
    """One row per filled (or partially filled) notional sale, written from the fill:
    requested = proceeds + dust + unfilled notional + slippage, always."""

    __tablename__ = "dust_ledger"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    execution_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("executions.id"), unique=True)
    account: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    requested_notional: Mapped[Decimal]
    price: Mapped[Decimal]
    quantity: Mapped[Decimal]
    proceeds: Mapped[Decimal]
    dust: Mapped[Decimal]
    # The quoted value of shares that did not fill, and quoted minus filled value of those that did.
    unfilled_notional: Mapped[Decimal] = mapped_column(server_default="0")
    slippage: Mapped[Decimal] = mapped_column(server_default="0")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "requested_notional = proceeds + dust + unfilled_notional + slippage",
            name="requested_is_proceeds_plus_dust",
        ),
        CheckConstraint("proceeds = quantity * price", name="proceeds_is_quantity_times_price"),
        CheckConstraint("dust >= 0 AND quantity > 0 AND price > 0", name="positive_parts"),
    )
