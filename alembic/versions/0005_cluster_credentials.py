"""Credentials out of the clusters heap, and indexes for status filters, label filters and
deep pages.

Every list scans ``clusters``; the ~1.1 KB encrypted kubeconfig of each row (under the 2 KB TOAST
threshold, so stored inline) made that heap several times the size of the columns lists read.
Only the poller, imports and key rotation need it: it moves to a 1:1 table. The rows are copied,
not re-encrypted (the cluster id stays the associated data), and the downgrade copies them back.

The old columns' space in ``clusters`` is reclaimed only when the table is rewritten
(``VACUUM FULL clusters`` or pg_repack, optional; see the README's upgrade notes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cluster_credentials",
        sa.Column(
            "cluster_id",
            sa.Uuid(),
            sa.ForeignKey("clusters.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("kubeconfig_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("kubeconfig_key_id", sa.Text(), nullable=False),
        sa.Column("kubeconfig_format", sa.SmallInteger(), nullable=False),
    )
    # Key checks at start and rotations look records up by key id.
    op.create_index(
        "cluster_credentials_key_idx",
        "cluster_credentials",
        ["kubeconfig_key_id", "kubeconfig_format"],
    )
    # A missing key id or format was read as '' and 0 before (StoredKubeconfig.from_row).
    op.execute(
        "INSERT INTO cluster_credentials "
        "(cluster_id, kubeconfig_ciphertext, kubeconfig_key_id, kubeconfig_format) "
        "SELECT id, kubeconfig_ciphertext, coalesce(kubeconfig_key_id, ''), "
        "coalesce(kubeconfig_format, 0) FROM clusters WHERE kubeconfig_ciphertext IS NOT NULL"
    )
    op.drop_column("clusters", "kubeconfig_ciphertext")
    op.drop_column("clusters", "kubeconfig_key_id")
    op.drop_column("clusters", "kubeconfig_format")
    # A status filter walks the few failing clusters' states and joins their clusters, instead
    # of hashing every live cluster; the id makes it an index-only scan.
    op.create_index("cluster_states_status_cluster_idx", "cluster_states", ["status", "cluster_id"])
    op.drop_index("cluster_states_status_idx", table_name="cluster_states")
    # A status filter counts matching states less those of removed clusters, found here.
    op.create_index(
        "clusters_removed_idx",
        "clusters",
        ["id"],
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
    )
    # Label equality (`@>`, what labels and selectors' `=` and `in` become) through one entry
    # per key and value; the jsonb_ops index stays for `?` (a selector's `key` and `!key`).
    op.execute(
        "CREATE INDEX clusters_labels_path_idx ON clusters USING gin (labels jsonb_path_ops)"
    )
    # Pages by name read (name, id) from the index alone: the unique index on live names,
    # rebuilt under its own name with the id included (deep pages walk thousands of entries).
    op.execute(
        "CREATE UNIQUE INDEX clusters_name_live_key_new ON clusters (name) INCLUDE (id) "
        "WHERE deleted_at IS NULL"
    )
    op.drop_index("clusters_name_live_key", table_name="clusters")
    op.execute("ALTER INDEX clusters_name_live_key_new RENAME TO clusters_name_live_key")


def downgrade() -> None:
    op.execute(
        "CREATE UNIQUE INDEX clusters_name_live_key_old ON clusters (name) WHERE deleted_at IS NULL"
    )
    op.drop_index("clusters_name_live_key", table_name="clusters")
    op.execute("ALTER INDEX clusters_name_live_key_old RENAME TO clusters_name_live_key")
    op.drop_index("clusters_labels_path_idx", table_name="clusters")
    op.drop_index("clusters_removed_idx", table_name="clusters")
    op.create_index("cluster_states_status_idx", "cluster_states", ["status"])
    op.drop_index("cluster_states_status_cluster_idx", table_name="cluster_states")
    op.add_column("clusters", sa.Column("kubeconfig_ciphertext", sa.LargeBinary(), nullable=True))
    op.add_column("clusters", sa.Column("kubeconfig_key_id", sa.Text(), nullable=True))
    op.add_column("clusters", sa.Column("kubeconfig_format", sa.SmallInteger(), nullable=True))
    op.execute(
        "UPDATE clusters SET kubeconfig_ciphertext = c.kubeconfig_ciphertext, "
        "kubeconfig_key_id = c.kubeconfig_key_id, kubeconfig_format = c.kubeconfig_format "
        "FROM cluster_credentials c WHERE c.cluster_id = clusters.id"
    )
    op.drop_table("cluster_credentials")
