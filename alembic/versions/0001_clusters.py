"""Clusters, their health states and the fingerprints of encryption keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("HEALTHY", "DEGRADED", "UNHEALTHY", "UNREACHABLE", "UNKNOWN")


def upgrade() -> None:
    # Substring search on name and description stays an index scan at 100,000 clusters.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_table(
        "clusters",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column(
            "labels",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column("api_server_url", sa.Text(), nullable=False),
        sa.Column("kubeconfig_ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("kubeconfig_key_id", sa.Text(), nullable=True),
        sa.Column("kubeconfig_format", sa.SmallInteger(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("jsonb_typeof(labels) = 'object'", name="clusters_labels_object"),
    )
    # Names are unique among live clusters only, so a removed cluster's name can be reused.
    op.create_index(
        "clusters_name_live_key",
        "clusters",
        ["name"],
        unique=True,
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index("clusters_labels_idx", "clusters", ["labels"], postgresql_using="gin")
    op.create_index(
        "clusters_created_at_idx",
        "clusters",
        ["created_at", "id"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )
    op.execute("CREATE INDEX clusters_name_trgm_idx ON clusters USING gin (name gin_trgm_ops)")
    op.execute(
        "CREATE INDEX clusters_description_trgm_idx ON clusters "
        "USING gin (description gin_trgm_ops)"
    )

    op.create_table(
        "cluster_states",
        sa.Column(
            "cluster_id",
            sa.Uuid(),
            sa.ForeignKey("clusters.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("status", sa.Text(), nullable=False, server_default="UNKNOWN"),
        sa.Column("node_count", sa.Integer(), nullable=True),
        sa.Column("ready_node_count", sa.Integer(), nullable=True),
        sa.Column("cpu_capacity_cores", sa.Numeric(20, 3), nullable=True),
        sa.Column("cpu_allocatable_cores", sa.Numeric(20, 3), nullable=True),
        sa.Column("cpu_usage_cores", sa.Numeric(20, 3), nullable=True),
        sa.Column("memory_capacity_bytes", sa.BigInteger(), nullable=True),
        sa.Column("memory_allocatable_bytes", sa.BigInteger(), nullable=True),
        sa.Column("memory_usage_bytes", sa.BigInteger(), nullable=True),
        sa.Column("kubernetes_version", sa.Text(), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error_code", sa.Text(), nullable=True),
        sa.Column("last_error_message", sa.Text(), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column(
            "next_check_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{status}'" for status in STATUSES) + ")",
            name="cluster_states_status_known",
        ),
    )
    op.create_index("cluster_states_status_idx", "cluster_states", ["status"])
    op.create_index("cluster_states_next_check_at_idx", "cluster_states", ["next_check_at"])

    op.create_table(
        "encryption_keys",
        sa.Column("key_id", sa.Text(), primary_key=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("encryption_keys")
    op.drop_table("cluster_states")
    op.drop_table("clusters")
    # pg_trgm may serve other schemas in a shared database; leaving it is harmless.
