"""audit totals unbounded: sums of numeric(38, 18) values overflowed numeric(38, 18)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 15:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each row is bounded by numeric(38, 18); a sum of them is not (two trades of 9e19 in one
# webhook made the statement trigger's INSERT overflow, and the webhook answered 500).
COLUMNS = {
    "symbol_totals": ("trades_applied", "filled", "in_flight", "returned"),
    "symbol_total_deltas": ("trades_applied", "filled", "in_flight", "returned"),
    "book_totals": ("quantity", "filled", "proceeds", "dust"),
    "book_total_deltas": ("quantity", "filled", "proceeds", "dust"),
    "audit_checkpoints": ("trades_applied", "filled", "archived_trades_applied", "archived_filled"),
    "audit_verifier_sums": ("trades_applied", "filled"),
}


def upgrade() -> None:
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.Numeric(), existing_type=sa.Numeric(38, 18))


def downgrade() -> None:
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.Numeric(38, 18), existing_type=sa.Numeric())
