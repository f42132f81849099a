"""executions turned away by their symbol's call limit are marked: only they (and those left by a
dead node) are woken when a call slot frees, not every execution still queued

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites nothing. Executions turned away before the upgrade
    # are not marked; the claims of their symbol wake them as left waiting after a second, and
    # the sweep of stale pending executions re-sends them in any case.
    op.add_column("executions", sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("executions", "waiting_since")
