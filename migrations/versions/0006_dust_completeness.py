"""dust ledger on fill, re-execution lineage, P&L reasons, consolidation buys

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 07:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_SOURCES = "source IN ('hedge', 'sell', 'exit', 'dust_cleanup', 'dust_sale', 'broker_cleanup')"
NEW_SOURCES = "source IN ('hedge', 'sell', 'exit', 'dust_cleanup', 'dust_sale', 'broker_cleanup', 'consolidate')"
OLD_LEDGER = "requested_notional = proceeds + dust"
NEW_LEDGER = "requested_notional = proceeds + dust + unfilled_notional + slippage"


def upgrade() -> None:
    # A notional sale keeps its quote on the execution until it fills; the ledger row is written then.
    op.add_column("executions", sa.Column("requested_notional", sa.Numeric(38, 18), nullable=True))
    op.add_column("executions", sa.Column("quoted_price", sa.Numeric(38, 18), nullable=True))
    op.drop_constraint(op.f("ck_executions_source"), "executions", type_="check")
    op.create_check_constraint(op.f("ck_executions_source"), "executions", NEW_SOURCES)
    op.add_column("dust_ledger", sa.Column("unfilled_notional", sa.Numeric(38, 18), server_default="0", nullable=False))
    op.add_column("dust_ledger", sa.Column("slippage", sa.Numeric(38, 18), server_default="0", nullable=False))
    op.drop_constraint(op.f("ck_dust_ledger_requested_is_proceeds_plus_dust"), "dust_ledger", type_="check")
    op.create_check_constraint(op.f("ck_dust_ledger_requested_is_proceeds_plus_dust"), "dust_ledger", NEW_LEDGER)
    # Which trades a re-execution's shares came from, through the returns it took.
    op.create_table(
        "contribution_origins",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("execution_id", sa.UUID(), nullable=False),
        sa.Column("return_id", sa.BigInteger(), nullable=False),
        sa.Column("trade_id", sa.String(length=128), nullable=False),
        sa.Column("quantity", sa.Numeric(38, 18), nullable=False),
        sa.CheckConstraint("quantity <> 0", name=op.f("ck_contribution_origins_quantity_non_zero")),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name=op.f("fk_contribution_origins_execution_id_executions")
        ),
        sa.ForeignKeyConstraint(
            ["return_id"], ["execution_returns.id"], name=op.f("fk_contribution_origins_return_id_execution_returns")
        ),
        sa.ForeignKeyConstraint(["trade_id"], ["trades.id"], name=op.f("fk_contribution_origins_trade_id_trades")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contribution_origins")),
    )
    op.create_index(op.f("ix_contribution_origins_execution_id"), "contribution_origins", ["execution_id"])
    op.create_index(op.f("ix_contribution_origins_trade_id"), "contribution_origins", ["trade_id"])
    op.create_index(op.f("ix_contribution_origins_return_id"), "contribution_origins", ["return_id"])
    # An exit's P&L carries the operator's reason (SPEC 1.10); a notional sale's is "sale".
    op.drop_constraint(op.f("ck_realized_pnl_reason"), "realized_pnl", type_="check")
    op.alter_column("realized_pnl", "reason", type_=sa.Text(), existing_type=sa.String(length=16))
    op.execute("UPDATE realized_pnl SET reason = 'sale' WHERE reason = 'sell'")
    op.create_check_constraint(op.f("ck_realized_pnl_reason"), "realized_pnl", "length(reason) > 0")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_realized_pnl_reason"), "realized_pnl", type_="check")
    op.execute(
        "UPDATE realized_pnl SET reason = CASE WHEN reason = 'sale' THEN 'sell' ELSE 'exit' END"
        " WHERE reason NOT IN ('sell', 'exit', 'dust_cleanup', 'dust_sale', 'broker_cleanup')"
    )
    op.alter_column("realized_pnl", "reason", type_=sa.String(length=16), existing_type=sa.Text())
    op.create_check_constraint(
        op.f("ck_realized_pnl_reason"),
        "realized_pnl",
        "reason IN ('sell', 'exit', 'dust_cleanup', 'dust_sale', 'broker_cleanup')",
    )
    op.drop_table("contribution_origins")
    op.drop_constraint(op.f("ck_dust_ledger_requested_is_proceeds_plus_dust"), "dust_ledger", type_="check")
    op.execute("DELETE FROM dust_ledger WHERE unfilled_notional <> 0 OR slippage <> 0")
    op.create_check_constraint(op.f("ck_dust_ledger_requested_is_proceeds_plus_dust"), "dust_ledger", OLD_LEDGER)
    op.drop_column("dust_ledger", "slippage")
    op.drop_column("dust_ledger", "unfilled_notional")
    op.execute("DELETE FROM executions WHERE source = 'consolidate'")
    op.drop_constraint(op.f("ck_executions_source"), "executions", type_="check")
    op.create_check_constraint(op.f("ck_executions_source"), "executions", OLD_SOURCES)
    op.drop_column("executions", "quoted_price")
    op.drop_column("executions", "requested_notional")
