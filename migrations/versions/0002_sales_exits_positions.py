"""sales, exits, positions, realized pnl, dust ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 11:55:09.618665
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "positions",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=38, scale=18), server_default="0", nullable=False),
        sa.Column("average_price", sa.Numeric(precision=38, scale=18), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("status IN ('open', 'dust_orphaned')", name=op.f("ck_positions_status")),
        sa.CheckConstraint(
            "average_price IS NULL OR average_price > 0", name=op.f("ck_positions_average_price_positive")
        ),
        sa.PrimaryKeyConstraint("account", "symbol", name=op.f("pk_positions")),
    )
    op.create_table(
        "dust_ledger",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("execution_id", sa.UUID(), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("requested_notional", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("price", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("quantity", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("proceeds", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("dust", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("dust >= 0 AND quantity > 0 AND price > 0", name=op.f("ck_dust_ledger_positive_parts")),
        sa.CheckConstraint("proceeds = quantity * price", name=op.f("ck_dust_ledger_proceeds_is_quantity_times_price")),
        sa.CheckConstraint(
            "requested_notional = proceeds + dust",
            name=op.f("ck_dust_ledger_requested_is_proceeds_plus_dust"),
        ),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name=op.f("fk_dust_ledger_execution_id_executions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dust_ledger")),
        sa.UniqueConstraint("execution_id", name=op.f("uq_dust_ledger_execution_id")),
    )
    op.create_table(
        "realized_pnl",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("execution_id", sa.UUID(), nullable=False),
        sa.Column("related_execution_id", sa.UUID(), nullable=True),
        sa.Column("quantity", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("entry_price", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("exit_price", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("pnl", sa.Numeric(precision=38, scale=18), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("reason IN ('sell', 'exit', 'dust_cleanup')", name=op.f("ck_realized_pnl_reason")),
        sa.CheckConstraint("pnl = (exit_price - entry_price) * quantity", name=op.f("ck_realized_pnl_pnl_is_exact")),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_realized_pnl_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name=op.f("fk_realized_pnl_execution_id_executions")
        ),
        sa.ForeignKeyConstraint(
            ["related_execution_id"],
            ["executions.id"],
            name=op.f("fk_realized_pnl_related_execution_id_executions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_realized_pnl")),
    )
    op.create_index(op.f("ix_realized_pnl_execution_id"), "realized_pnl", ["execution_id"], unique=False)
    op.add_column("executions", sa.Column("source", sa.String(length=16), server_default="hedge", nullable=False))
    op.add_column("executions", sa.Column("account", sa.String(length=64), server_default="default", nullable=False))
    op.add_column("executions", sa.Column("parent_execution_id", sa.UUID(), nullable=True))
    op.add_column("executions", sa.Column("reason", sa.Text(), nullable=True))
    op.create_foreign_key(
        op.f("fk_executions_parent_execution_id_executions"),
        "executions",
        "executions",
        ["parent_execution_id"],
        ["id"],
    )
    # By hand (autogenerate does not compare CHECK constraints): sales may be fractional.
    op.drop_constraint(op.f("ck_executions_whole_shares"), "executions", type_="check")
    op.create_check_constraint(op.f("ck_executions_quantity_positive"), "executions", "quantity > 0")
    op.create_check_constraint(
        op.f("ck_executions_hedges_whole_shares"),
        "executions",
        "source <> 'hedge' OR quantity = trunc(quantity)",
    )
    op.create_check_constraint(
        op.f("ck_executions_source"), "executions", "source IN ('hedge', 'sell', 'exit', 'dust_cleanup')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_executions_source"), "executions", type_="check")
    op.drop_constraint(op.f("ck_executions_hedges_whole_shares"), "executions", type_="check")
    op.drop_constraint(op.f("ck_executions_quantity_positive"), "executions", type_="check")
    op.create_check_constraint(
        op.f("ck_executions_whole_shares"), "executions", "quantity > 0 AND quantity = trunc(quantity)"
    )
    op.drop_constraint(op.f("fk_executions_parent_execution_id_executions"), "executions", type_="foreignkey")
    op.drop_column("executions", "reason")
    op.drop_column("executions", "parent_execution_id")
    op.drop_column("executions", "account")
    op.drop_column("executions", "source")
    op.drop_table("realized_pnl")
    op.drop_table("dust_ledger")
    op.drop_table("positions")
