"""operations: venue rules, lots, balances, price health, job runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 12:02:59.231970
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "balances",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("cash", sa.Numeric(precision=38, scale=18), nullable=True),
        sa.Column("buying_power", sa.Numeric(precision=38, scale=18), nullable=True),
        sa.Column("equity", sa.Numeric(precision=38, scale=18), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_balances")),
    )
    op.create_table(
        "job_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
    )
    op.create_index("ix_job_runs_job_started", "job_runs", ["job", "started_at"], unique=False)
    op.create_table(
        "price_health",
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("last_price", sa.Numeric(precision=38, scale=18), nullable=True),
        sa.Column("last_price_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("state", sa.String(length=16), server_default="closed", nullable=False),
        sa.Column("cooldown_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("state IN ('closed', 'open', 'half_open')", name=op.f("ck_price_health_state")),
        sa.CheckConstraint("consecutive_failures >= 0", name=op.f("ck_price_health_failures_non_negative")),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_price_health")),
    )
    op.create_table(
        "venue_rules",
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("tradable", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("whole_shares", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("step", sa.Numeric(precision=38, scale=18), server_default="1", nullable=False),
        sa.Column("min_quantity", sa.Numeric(precision=38, scale=18), server_default="0", nullable=False),
        sa.Column("min_notional", sa.Numeric(precision=38, scale=18), server_default="0", nullable=False),
        sa.Column("price_increment", sa.Numeric(precision=38, scale=18), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("source IN ('broker', 'override')", name=op.f("ck_venue_rules_source")),
        sa.CheckConstraint(
            "step > 0 AND min_quantity >= 0 AND min_notional >= 0", name=op.f("ck_venue_rules_non_negative")
        ),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_venue_rules")),
    )
    op.create_table(
        "lots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), server_default="holding", nullable=False),
        sa.Column("source", sa.String(length=16), server_default="broker", nullable=False),
        sa.Column("quantity", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("price", sa.Numeric(precision=38, scale=18), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("aggregate_id", sa.BigInteger(), nullable=True),
        sa.Column("execution_id", sa.UUID(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "kind = 'aggregate' OR status NOT IN ('dust_pending', 'dust_ready', 'selling')",
            name=op.f("ck_lots_aggregates_wait"),
        ),
        sa.CheckConstraint("kind IN ('holding', 'aggregate')", name=op.f("ck_lots_kind")),
        sa.CheckConstraint(
            "status <> 'dust_aggregated' OR aggregate_id IS NOT NULL", name=op.f("ck_lots_aggregated_has_lineage")
        ),
        sa.CheckConstraint(
            "status IN ('open', 'dust_pending', 'dust_ready', 'dust_aggregated', 'selling', 'sold')",
            name=op.f("ck_lots_status"),
        ),
        sa.CheckConstraint("quantity >= 0", name=op.f("ck_lots_quantity_non_negative")),
        sa.ForeignKeyConstraint(["aggregate_id"], ["lots.id"], name=op.f("fk_lots_aggregate_id_lots")),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], name=op.f("fk_lots_execution_id_executions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lots")),
    )
    op.create_index("ix_lots_account_symbol_status", "lots", ["account", "symbol", "status"], unique=False)
    op.create_index(
        "uq_lots_live_aggregate",
        "lots",
        ["account", "symbol"],
        unique=True,
        postgresql_where=sa.text("kind = 'aggregate' AND status IN ('dust_pending', 'dust_ready', 'selling')"),
    )
    op.add_column("paper_orders", sa.Column("account", sa.String(length=64), server_default="default", nullable=False))
    # By hand (autogenerate does not compare CHECK constraints): dust sales and broker cleanups.
    op.drop_constraint(op.f("ck_executions_source"), "executions", type_="check")
    op.create_check_constraint(
        op.f("ck_executions_source"),
        "executions",
        "source IN ('hedge', 'sell', 'exit', 'dust_cleanup', 'dust_sale', 'broker_cleanup')",
    )


def downgrade() -> None:
    op.drop_column("paper_orders", "account")
    op.drop_constraint(op.f("ck_executions_source"), "executions", type_="check")
    op.create_check_constraint(
        op.f("ck_executions_source"), "executions", "source IN ('hedge', 'sell', 'exit', 'dust_cleanup')"
    )
    op.drop_index(
        "uq_lots_live_aggregate",
        table_name="lots",
        postgresql_where=sa.text("kind = 'aggregate' AND status IN ('dust_pending', 'dust_ready', 'selling')"),
    )
    op.drop_index("ix_lots_account_symbol_status", table_name="lots")
    op.drop_table("lots")
    op.drop_table("venue_rules")
    op.drop_table("price_health")
    op.drop_index("ix_job_runs_job_started", table_name="job_runs")
    op.drop_table("job_runs")
    op.drop_table("balances")
