"""The event log (a transactional outbox), cluster versions, credential facts, status damping.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TYPES = (
    "IMPORTED",
    "UPDATED",
    "REMOVED",
    "STATUS_CHANGED",
    "VERSION_CHANGED",
    "NODES_CHANGED",
    "CHECK_FAILED",
    "RECOVERED",
    "CREDENTIAL_EXPIRING",
)
STATUSES = ("HEALTHY", "DEGRADED", "UNHEALTHY", "UNREACHABLE", "UNKNOWN")


def upgrade() -> None:
    # Optimistic concurrency: every change to a cluster bumps its version.
    op.add_column(
        "clusters", sa.Column("version", sa.BigInteger(), nullable=False, server_default="1")
    )
    # What the stored credential is (never the secret): for expiry warnings.
    op.add_column("clusters", sa.Column("credential_kind", sa.Text(), nullable=True))
    op.add_column(
        "clusters", sa.Column("credential_expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("clusters", sa.Column("credential_subject", sa.Text(), nullable=True))
    op.add_column(
        "clusters", sa.Column("credential_warned_at", sa.DateTime(timezone=True), nullable=True)
    )
    # A status seen but not yet held for poller.status_threshold checks.
    op.add_column("cluster_states", sa.Column("pending_status", sa.Text(), nullable=True))
    op.add_column(
        "cluster_states",
        sa.Column("pending_count", sa.Integer(), nullable=False, server_default="0"),
    )

    op.create_table(
        "cluster_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), primary_key=True),
        # No foreign key action: removal is a soft delete, and history outlives it.
        sa.Column("cluster_id", sa.Uuid(), sa.ForeignKey("clusters.id"), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("previous_status", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=True),
        # {field: [old, new]} for every changed field; never a secret.
        sa.Column(
            "changes", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("message", sa.Text(), nullable=False, server_default=""),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "type IN (" + ", ".join(f"'{kind}'" for kind in EVENT_TYPES) + ")",
            name="cluster_events_type_known",
        ),
    )
    op.create_index("cluster_events_cluster_idx", "cluster_events", ["cluster_id", "id"])
    op.create_index("cluster_events_at_idx", "cluster_events", ["at"])
    # Writers take a transaction-level advisory lock before logging (see fleetql/db/events.py),
    # so ids are handed out in commit order and "every id after N" never misses a late commit.

    # Where the relay (one leader among the replicas) has published up to.
    op.create_table(
        "event_relay",
        sa.Column("id", sa.SmallInteger(), primary_key=True),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        # Events up to this id may have been pruned: a resume from before it cannot be served.
        sa.Column("pruned_through", sa.BigInteger(), nullable=False, server_default="0"),
        sa.CheckConstraint("id = 1", name="event_relay_single_row"),
    )
    op.execute("INSERT INTO event_relay (id, last_event_id) VALUES (1, 0)")

    # Wake the relay at commit; notifications of one transaction are merged by PostgreSQL.
    op.execute(
        """
        CREATE FUNCTION fleetql_wake_event_relay() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('fleetql_event_log', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER cluster_events_wake_relay AFTER INSERT ON cluster_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION fleetql_wake_event_relay()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER cluster_events_wake_relay ON cluster_events")
    op.execute("DROP FUNCTION fleetql_wake_event_relay()")
    op.drop_table("event_relay")
    op.drop_table("cluster_events")
    op.drop_column("cluster_states", "pending_count")
    op.drop_column("cluster_states", "pending_status")
    for column in (
        "credential_warned_at",
        "credential_subject",
        "credential_expires_at",
        "credential_kind",
        "version",
    ):
        op.drop_column("clusters", column)
