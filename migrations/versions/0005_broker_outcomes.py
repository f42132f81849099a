"""broker outcomes: unknown outcomes counted per execution, account pauses, execution claims

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Answers that say nothing (timeouts, 5xx, a 403 on a lookup) in a row; a person is alerted
    # once when it reaches execution.alert_after_unknown_outcomes, and it resets on an answer.
    op.add_column("executions", sa.Column("unknown_outcomes", sa.Integer(), server_default="0", nullable=False))
    # The lease a worker holds on an execution while it calls the broker with no transaction open.
    op.add_column("executions", sa.Column("claimed_by", sa.Text(), nullable=True))
    op.add_column("executions", sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "account_pauses",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("probe_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refusals", sa.Integer(), server_default="1", nullable=False),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_account_pauses")),
    )


def downgrade() -> None:
    op.drop_table("account_pauses")
    op.drop_column("executions", "claimed_until")
    op.drop_column("executions", "claimed_by")
    op.drop_column("executions", "unknown_outcomes")
