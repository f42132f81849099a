"""order call health: a fleet-wide per-symbol breaker for brokerage order calls

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One row per symbol whose order calls ever said nothing; no row means closed, so the
    # claim of a healthy symbol reads nothing and writes nothing here.
    op.create_table(
        "order_call_health",
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="closed", nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("opens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("cooldown_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("probe_token", sa.Text(), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("state IN ('closed', 'open', 'half_open')", name=op.f("ck_order_call_health_state")),
        sa.CheckConstraint(
            "consecutive_failures >= 0 AND opens >= 0", name=op.f("ck_order_call_health_counts_non_negative")
        ),
        sa.CheckConstraint(
            "state = 'closed' OR cooldown_until IS NOT NULL", name=op.f("ck_order_call_health_open_has_cooldown")
        ),
        sa.PrimaryKeyConstraint("symbol", name=op.f("pk_order_call_health")),
    )


def downgrade() -> None:
    op.drop_table("order_call_health")
