"""Who is checking a cluster right now, so that "check it now" never starts a second check.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Set when a poller claims the cluster, cleared when it records the check; a claim past
    # this time belongs to a replica that died, and the cluster may be claimed again.
    op.add_column(
        "cluster_states", sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("cluster_states", "claimed_until")
