"""execution claims counted: the first claim of an execution posts without a lookup

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 14:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Claims ever taken on the execution (the claim's attempt count). Only a claim can lead to a
    # POST, so the first claim knows the broker has nothing under the client_order_id and skips
    # the lookup; every later claim looks the order up first (SPEC 5).
    op.add_column("executions", sa.Column("claims", sa.Integer(), server_default="0", nullable=False))
    # Executions that existed before this column may have been sent already: never "first".
    op.execute("UPDATE executions SET claims = 1")


def downgrade() -> None:
    op.drop_column("executions", "claims")
