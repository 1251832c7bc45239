"""Fleet totals kept current by triggers, so the dashboard header reads a few rows, not the fleet.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

``fleet_totals`` holds, per (status, Kubernetes minor version), the count of live clusters and
the sums of their nodes, ready nodes, CPU and memory. Triggers on ``cluster_states`` (a state
inserted, its summed columns changed, deleted) and ``clusters`` (removed, restored, hard deleted)
change it inside the writing transaction, so a read right after a write is exact.

Inserts and deletes of states are counted per statement (a COPY of 100,000 states is one
aggregate); an update of a state per row, and only when a summed column, the status or the minor
version changed (a trigger WHEN clause: most checks change nothing and call no function).

Each group is spread over ``SHARDS`` rows, chosen by the writing transaction's id: two
transactions add to the same row only one time in eight, so concurrent writers rarely wait on
one another, and one transaction (a poller batch) stays within one shard's rows. A row means
nothing on its own (it may even be negative); only the sum over a group's shards does.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0006"
# The lead chains this after 0005 at merge.
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHARDS = 8

# The summed columns of cluster_states; a change of anything else never touches the totals.
SUMMED = (
    "node_count",
    "ready_node_count",
    "cpu_capacity_cores",
    "cpu_allocatable_cores",
    "memory_capacity_bytes",
    "memory_allocatable_bytes",
)
# fleet_totals column ← the cluster_states column it sums.
TOTALS = {
    "nodes": "node_count",
    "ready_nodes": "ready_node_count",
    "cpu_capacity_cores": "cpu_capacity_cores",
    "cpu_allocatable_cores": "cpu_allocatable_cores",
    "memory_capacity_bytes": "memory_capacity_bytes",
    "memory_allocatable_bytes": "memory_allocatable_bytes",
}

_COLUMNS = ", ".join(TOTALS)
_ADD_EXCLUDED = ", ".join(f"{name} = t.{name} + excluded.{name}" for name in ("clusters", *TOTALS))

# fleetql/db/summary.py's _MINOR, in SQL: "v1.28.7" → "v1.28"; '' when there is none (a primary
# key column cannot be null, and the pattern never matches an empty string).
MINOR_FUNCTION = """
CREATE FUNCTION fleet_totals_minor(version text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT coalesce(substring(version FROM '^v?[0-9]+[.][0-9]+'), '') $$
"""

# Take one state out of the totals and put another in, in one statement. Rows are written in
# key order, so two transactions moving clusters between the same two groups lock them in the
# same order (no deadlock between them); a move within one group is one row.
SHIFT_FUNCTION = f"""
CREATE FUNCTION fleet_totals_shift(gone cluster_states, came cluster_states) RETURNS void
LANGUAGE sql AS $$
INSERT INTO fleet_totals AS t (status, minor, shard, clusters, {_COLUMNS})
SELECT d.status, fleet_totals_minor(d.version),
       (pg_current_xact_id()::text::bigint % {SHARDS})::smallint,
       sum(d.sign), {", ".join(f"sum(d.sign * coalesce(d.{c}, 0))" for c in TOTALS.values())}
FROM (VALUES (gone.status, gone.kubernetes_version, -1, {", ".join(f"gone.{c}" for c in SUMMED)}),
             (came.status, came.kubernetes_version, 1, {", ".join(f"came.{c}" for c in SUMMED)}))
     AS d(status, version, sign, {", ".join(SUMMED)})
WHERE d.status IS NOT NULL
GROUP BY d.status, fleet_totals_minor(d.version)
ORDER BY d.status, fleet_totals_minor(d.version)
ON CONFLICT (status, minor, shard) DO UPDATE SET {_ADD_EXCLUDED}
$$
"""

# A state counts while its cluster is live. FOR SHARE on the cluster row orders a state change
# and a removal, restore or hard delete of the same cluster (an UPDATE or DELETE of that row
# conflicts with FOR SHARE; FOR KEY SHARE would not stop an UPDATE of deleted_at): whichever
# comes second waits for the first to commit and sees its outcome. A state writer that logs an
# event takes a KEY SHARE lock on the row anyway (the event's foreign key).
ON_STATE_UPDATED_FUNCTION = """
CREATE FUNCTION fleet_totals_on_state_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM clusters WHERE id = NEW.cluster_id AND deleted_at IS NULL FOR SHARE;
    IF FOUND THEN
        PERFORM fleet_totals_shift(OLD, NEW);
    END IF;
    RETURN NULL;
END
$$
"""


def _add_states(source: str, sign: int) -> str:
    """Add (or take out) the states of live clusters in a transition table, one row per group:
    a COPY of 100,000 states is one aggregate, not 100,000 updates of a few rows."""
    sums = ", ".join(f"{sign} * coalesce(sum(s.{c}), 0)" for c in TOTALS.values())
    return f"""
        WITH live AS (
            SELECT s.* FROM {source} s JOIN clusters c ON c.id = s.cluster_id
            WHERE c.deleted_at IS NULL
            FOR SHARE OF c
        )
        INSERT INTO fleet_totals AS t (status, minor, shard, clusters, {_COLUMNS})
        SELECT s.status, fleet_totals_minor(s.kubernetes_version),
               (pg_current_xact_id()::text::bigint % {SHARDS})::smallint,
               {sign} * count(*), {sums}
        FROM live s
        GROUP BY 1, 2
        ORDER BY 1, 2
        ON CONFLICT (status, minor, shard) DO UPDATE SET {_ADD_EXCLUDED};"""


# States inserted (an import) or deleted (directly, or by the cascade of a hard delete, when the
# cluster row is already gone and its BEFORE DELETE trigger has counted it out), per statement.
ON_STATES_INSERTED_OR_DELETED_FUNCTION = f"""
CREATE FUNCTION fleet_totals_on_states_inserted_or_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN{_add_states("added", 1)}
    ELSE{_add_states("gone", -1)}
    END IF;
    RETURN NULL;
END
$$
"""

# Removed (deleted_at set), restored (cleared) or hard deleted while live: the cluster's state
# leaves or joins the totals. The UPDATE or DELETE that fired this waited for any state writer
# holding FOR SHARE on the row, so the state read here is the one that writer committed; a state
# writer coming later waits for this transaction and then finds the cluster's new liveness.
ON_CLUSTER_FUNCTION = """
CREATE FUNCTION fleet_totals_on_cluster() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    state cluster_states;
    target uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
BEGIN
    SELECT * INTO state FROM cluster_states WHERE cluster_id = target;
    IF FOUND THEN
        IF TG_OP = 'UPDATE' AND NEW.deleted_at IS NULL THEN
            PERFORM fleet_totals_shift(NULL, state);
        ELSE
            PERFORM fleet_totals_shift(state, NULL);
        END IF;
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NULL END;
END
$$
"""

# Recount everything: the backfill, after a TRUNCATE (which fires no row triggers), and by hand
# (`SELECT fleet_totals_rebuild()`). The SHARE locks keep writers out until the recount commits:
# a change committed between the DELETE and the recount would otherwise be counted twice.
REBUILD_FUNCTION = f"""
CREATE FUNCTION fleet_totals_rebuild() RETURNS void LANGUAGE sql AS $$
LOCK TABLE clusters, cluster_states IN SHARE MODE;
DELETE FROM fleet_totals;
INSERT INTO fleet_totals (status, minor, shard, clusters, {_COLUMNS})
SELECT s.status, fleet_totals_minor(s.kubernetes_version), 0, count(*),
       {", ".join(f"coalesce(sum(s.{c}), 0)" for c in TOTALS.values())}
FROM clusters c JOIN cluster_states s ON s.cluster_id = c.id
WHERE c.deleted_at IS NULL
GROUP BY 1, 2;
$$
"""

ON_TRUNCATE_FUNCTION = """
CREATE FUNCTION fleet_totals_on_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fleet_totals_rebuild();
    RETURN NULL;
END
$$
"""

_MINOR_OF = "substring({}.kubernetes_version FROM '^v?[0-9]+[.][0-9]+')"
# Most checks change none of the summed columns: WHEN skips the function call altogether.
_STATE_CHANGED = " OR ".join(
    [
        "OLD.status IS DISTINCT FROM NEW.status",
        *(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in SUMMED),
        # The regular expression only when the version changed (a patch release keeps the
        # minor); written out, since a function call here is not inlined.
        "(OLD.kubernetes_version IS DISTINCT FROM NEW.kubernetes_version"
        f" AND {_MINOR_OF.format('OLD')} IS DISTINCT FROM {_MINOR_OF.format('NEW')})",
    ]
)
_WATCHED = ", ".join(("status", "kubernetes_version", *SUMMED))

TRIGGERS = (
    "CREATE TRIGGER fleet_totals_states_inserted AFTER INSERT ON cluster_states"
    " REFERENCING NEW TABLE AS added FOR EACH STATEMENT"
    " EXECUTE FUNCTION fleet_totals_on_states_inserted_or_deleted()",
    f"CREATE TRIGGER fleet_totals_state_updated AFTER UPDATE OF {_WATCHED} ON cluster_states"
    f" FOR EACH ROW WHEN ({_STATE_CHANGED}) EXECUTE FUNCTION fleet_totals_on_state_updated()",
    "CREATE TRIGGER fleet_totals_states_deleted AFTER DELETE ON cluster_states"
    " REFERENCING OLD TABLE AS gone FOR EACH STATEMENT"
    " EXECUTE FUNCTION fleet_totals_on_states_inserted_or_deleted()",
    "CREATE TRIGGER fleet_totals_states_truncated AFTER TRUNCATE ON cluster_states"
    " FOR EACH STATEMENT EXECUTE FUNCTION fleet_totals_on_truncate()",
    "CREATE TRIGGER fleet_totals_cluster_removed_or_restored AFTER UPDATE OF deleted_at"
    " ON clusters FOR EACH ROW"
    " WHEN ((OLD.deleted_at IS NULL) IS DISTINCT FROM (NEW.deleted_at IS NULL))"
    " EXECUTE FUNCTION fleet_totals_on_cluster()",
    # BEFORE: the cascade that deletes the state runs after the row is gone, when the state's
    # own trigger can no longer tell whether the cluster was live.
    "CREATE TRIGGER fleet_totals_cluster_deleted BEFORE DELETE ON clusters"
    " FOR EACH ROW WHEN (OLD.deleted_at IS NULL) EXECUTE FUNCTION fleet_totals_on_cluster()",
)


def upgrade() -> None:
    op.create_table(
        "fleet_totals",
        sa.Column("status", sa.Text(), primary_key=True),
        sa.Column("minor", sa.Text(), primary_key=True),
        sa.Column("shard", sa.SmallInteger(), primary_key=True),
        sa.Column("clusters", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("nodes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("ready_nodes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("cpu_capacity_cores", sa.Numeric(), nullable=False, server_default="0"),
        sa.Column("cpu_allocatable_cores", sa.Numeric(), nullable=False, server_default="0"),
        # numeric, not bigint: 100,000 clusters of 100 TiB each overflow a bigint.
        sa.Column("memory_capacity_bytes", sa.Numeric(), nullable=False, server_default="0"),
        sa.Column("memory_allocatable_bytes", sa.Numeric(), nullable=False, server_default="0"),
    )
    for statement in (
        MINOR_FUNCTION,
        SHIFT_FUNCTION,
        ON_STATE_UPDATED_FUNCTION,
        ON_STATES_INSERTED_OR_DELETED_FUNCTION,
        ON_CLUSTER_FUNCTION,
        REBUILD_FUNCTION,
        ON_TRUNCATE_FUNCTION,
        *TRIGGERS,
    ):
        op.execute(statement)
    # Creating the triggers locked both tables against writers until this transaction commits,
    # so the backfill counts exactly the rows the triggers will go on from.
    op.execute("SELECT fleet_totals_rebuild()")
    # credentialsExpiring depends on now(), so it stays a query; this keeps it an index range.
    op.create_index(
        "clusters_credential_expires_at_live_idx",
        "clusters",
        ["credential_expires_at"],
        postgresql_where=sa.text("deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("clusters_credential_expires_at_live_idx", table_name="clusters")
    for name, table in (
        ("fleet_totals_states_inserted", "cluster_states"),
        ("fleet_totals_state_updated", "cluster_states"),
        ("fleet_totals_states_deleted", "cluster_states"),
        ("fleet_totals_states_truncated", "cluster_states"),
        ("fleet_totals_cluster_removed_or_restored", "clusters"),
        ("fleet_totals_cluster_deleted", "clusters"),
    ):
        op.execute(f"DROP TRIGGER {name} ON {table}")
    for function in (
        "fleet_totals_on_truncate()",
        "fleet_totals_rebuild()",
        "fleet_totals_on_cluster()",
        "fleet_totals_on_states_inserted_or_deleted()",
        "fleet_totals_on_state_updated()",
        "fleet_totals_shift(cluster_states, cluster_states)",
        "fleet_totals_minor(text)",
    ):
        op.execute(f"DROP FUNCTION {function}")
    op.drop_table("fleet_totals")
