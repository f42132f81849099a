"""Tables of the Beat-scheduled operations: venue rules, broker lots and dust aggregates,
balances, price health and scheduled job runs. The schema is owned by Alembic migrations."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Identity, Index, Integer, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from models.tables import Base

LOT_STATUSES = ("open", "dust_pending", "dust_ready", "dust_aggregated", "selling", "sold")


class VenueRuleRow(Base):
    """What the venue accepts for a symbol: from the brokerage's asset data, or a config override."""

    __tablename__ = "venue_rules"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    tradable: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    whole_shares: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    step: Mapped[Decimal] = mapped_column(server_default="1")  # Alpaca min_trade_increment
    min_quantity: Mapped[Decimal] = mapped_column(server_default="0")  # Alpaca min_order_size
    min_notional: Mapped[Decimal] = mapped_column(server_default="0")
    price_increment: Mapped[Decimal | None]
    source: Mapped[str] = mapped_column(String(16))
    synced_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("step > 0 AND min_quantity >= 0 AND min_notional >= 0", name="non_negative"),
        CheckConstraint("source IN ('broker', 'override')", name="source"),
    )


class Lot(Base):
    """A holding of an account in a symbol (synced from the broker, or left over), or a dust
    aggregate that groups such lots until together they reach the venue's minimum."""

    __tablename__ = "lots"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16), server_default="holding")
    source: Mapped[str] = mapped_column(String(16), server_default="broker")  # broker | remainder | manual
    quantity: Mapped[Decimal]
    price: Mapped[Decimal | None]  # last price seen by the scan
    status: Mapped[str] = mapped_column(String(16), server_default="open")
    note: Mapped[str | None]
    aggregate_id: Mapped[int | None] = mapped_column(ForeignKey("lots.id"))
    execution_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("executions.id"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("quantity >= 0", name="quantity_non_negative"),
        CheckConstraint("kind IN ('holding', 'aggregate')", name="kind"),
        CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in LOT_STATUSES) + ")", name="status"),
        CheckConstraint(
            "kind = 'aggregate' OR status NOT IN ('dust_pending', 'dust_ready', 'selling')", name="aggregates_wait"
        ),
        CheckConstraint("status <> 'dust_aggregated' OR aggregate_id IS NOT NULL", name="aggregated_has_lineage"),
        # One live aggregate per account and symbol: new dust joins it instead of starting another.
        Index(
            "uq_lots_live_aggregate",
            "account",
            "symbol",
            unique=True,
            postgresql_where=text("kind = 'aggregate' AND status IN ('dust_pending', 'dust_ready', 'selling')"),
        ),
        Index("ix_lots_account_symbol_status", "account", "symbol", "status"),
    )


class Balance(Base):
    """The last known balance of an account, with its age; never assumed zero when unknown."""

    __tablename__ = "balances"
    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    cash: Mapped[Decimal | None]
    buying_power: Mapped[Decimal | None]
    equity: Mapped[Decimal | None]
    fetched_at: Mapped[datetime | None]  # when the values above were read from the broker
    attempted_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")  # of the last fetch
    last_error: Mapped[str | None]


class PriceHealth(Base):
    """Per-symbol price feed health: consecutive failures, the last good price, the breaker."""

    __tablename__ = "price_health"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_price: Mapped[Decimal | None]
    last_price_at: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    # closed: fetching; open: frozen until cooldown_until; half_open: one probe allowed
    state: Mapped[str] = mapped_column(String(16), server_default="closed")
    cooldown_until: Mapped[datetime | None]
    last_error: Mapped[str | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("state IN ('closed', 'open', 'half_open')", name="state"),
        CheckConstraint("consecutive_failures >= 0", name="failures_non_negative"),
    )


class JobRun(Base):
    """One row per scheduled job run: proves each Beat tick ran once across the fleet."""

    __tablename__ = "job_runs"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None]  # ok | failed
    summary: Mapped[str | None]  # JSON text of what the run saw and did

    __table_args__ = (Index("ix_job_runs_job_started", "job", "started_at"),)


class AccountPause(Base):
    """An account the broker refused as a whole (permissions, blocked, asset class not allowed):
    no order is sent for it until ``probe_after``, when one execution probes; an accepted order
    lifts the pause, another refusal extends it. Symbols are never frozen for it."""

    __tablename__ = "account_pauses"
    account: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str]
    paused_at: Mapped[datetime]
    probe_after: Mapped[datetime]
    refusals: Mapped[int] = mapped_column(Integer, server_default="1")


class OrderCallHealth(Base):
    """Per-symbol health of the brokerage's order calls, shared by the whole fleet: a breaker.

    closed: orders go out; calls whose answer said nothing (timeouts, 5xx, malformed answers,
    dropped connections) are counted in a row, an answer resets the count. open: after
    ``execution.failures_to_open`` of them no execution of the symbol is claimed until
    ``cooldown_until``. half_open: one execution probes; ``probe_token`` is its claim
    (``executions.claimed_by``), so the probe lives exactly as long as that claim's lease.
    No row is the same as closed with no failures: a healthy symbol never writes one."""

    __tablename__ = "order_call_health"
    symbol: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), server_default="closed")
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    opens: Mapped[int] = mapped_column(Integer, server_default="0")  # times opened since it last closed
    cooldown_until: Mapped[datetime | None]
    probe_token: Mapped[str | None]
    opened_at: Mapped[datetime | None]
    last_error: Mapped[str | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint("state IN ('closed', 'open', 'half_open')", name="state"),
        CheckConstraint("consecutive_failures >= 0 AND opens >= 0", name="counts_non_negative"),
        CheckConstraint("state = 'closed' OR cooldown_until IS NOT NULL", name="open_has_cooldown"),
    )
