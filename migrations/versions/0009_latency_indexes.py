"""indexes for the last minute's latencies: trades by accumulated_at, executions by submitted_at

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 14:10:00.000000

`dustpan up`'s status line reads the p99 of the last minute's trade received -> accumulated
and received -> submitted waits (workers/up_status.py) every refresh; without these a refresh
would scan the whole trade history. Partial: a row is indexed once it has the stamp, so a
trade's INSERT on the webhook path writes no entry here. Built CONCURRENTLY, outside the
migration's transaction: the webhook keeps inserting trades while a large table is indexed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = (
    ("ix_trades_accumulated_at", "trades", "accumulated_at"),
    ("ix_executions_submitted_at", "executions", "submitted_at"),
)


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, column in _INDEXES:
            op.create_index(
                name,
                table,
                [column],
                postgresql_where=sa.text(f"{column} IS NOT NULL"),
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, table, _column in _INDEXES:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
