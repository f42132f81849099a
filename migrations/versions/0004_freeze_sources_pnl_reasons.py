"""freeze sources and P&L reasons for dust sales and broker cleanups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 12:30:43.995820
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Say why a symbol is frozen in a column instead of in the reason's text.
    op.drop_constraint(op.f("ck_symbol_freezes_source"), "symbol_freezes", type_="check")
    op.execute(
        "UPDATE symbol_freezes SET source = CASE WHEN reason LIKE 'price feed failed%' THEN 'prices'"
        " ELSE 'rejections' END WHERE source = 'auto'"
    )
    op.create_check_constraint(
        op.f("ck_symbol_freezes_source"), "symbol_freezes", "source IN ('manual', 'rejections', 'prices')"
    )
    op.drop_constraint(op.f("ck_realized_pnl_reason"), "realized_pnl", type_="check")
    op.create_check_constraint(
        op.f("ck_realized_pnl_reason"),
        "realized_pnl",
        "reason IN ('sell', 'exit', 'dust_cleanup', 'dust_sale', 'broker_cleanup')",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_realized_pnl_reason"), "realized_pnl", type_="check")
    op.execute("UPDATE realized_pnl SET reason = 'dust_cleanup' WHERE reason IN ('dust_sale', 'broker_cleanup')")
    op.create_check_constraint(
        op.f("ck_realized_pnl_reason"), "realized_pnl", "reason IN ('sell', 'exit', 'dust_cleanup')"
    )
    op.drop_constraint(op.f("ck_symbol_freezes_source"), "symbol_freezes", type_="check")
    op.execute("UPDATE symbol_freezes SET source = 'auto' WHERE source <> 'manual'")
    op.create_check_constraint(op.f("ck_symbol_freezes_source"), "symbol_freezes", "source IN ('auto', 'manual')")
