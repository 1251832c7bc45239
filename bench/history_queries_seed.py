"""A month of event log for the history benchmark, written by PostgreSQL itself.

Every live cluster gets ``per_cluster`` events spread over the last ``days`` days (after its
creation), of the kinds a poller and a console write: status changes that alternate between
HEALTHY and the cluster's own bad status (so each change's ``previous_status`` is the status the
log last gave it), node count changes, failed checks and recoveries, label edits by a person and
the odd Kubernetes upgrade. One ``INSERT … SELECT generate_series … ORDER BY at`` writes them, so
ids follow time as the log's advisory lock makes them follow commits; the relay's position is
then set to the newest id, so a server started afterwards does not republish a month of events.
"""

from __future__ import annotations

import asyncpg

__all__ = ["seed_events"]

# Shares of the event kinds (cumulative upper bounds of random() per event).
_KINDS = """
    CASE
        WHEN r < 0.30 THEN 'STATUS_CHANGED'
        WHEN r < 0.45 THEN 'CHECK_FAILED'
        WHEN r < 0.60 THEN 'RECOVERED'
        WHEN r < 0.85 THEN 'NODES_CHANGED'
        WHEN r < 0.95 THEN 'UPDATED'
        ELSE 'VERSION_CHANGED'
    END
"""

_SEED = f"""
WITH raw AS (
    SELECT c.id AS cluster_id, s.n, random() AS r, random() AS jitter,
           (ARRAY['DEGRADED', 'UNHEALTHY', 'UNREACHABLE'])[1 + abs(hashtext(c.id::text)) % 3]
               AS bad,
           greatest(c.created_at, now() - make_interval(days => $2)) AS since
    FROM clusters c CROSS JOIN generate_series(1, $1::int) AS s(n)
    WHERE c.deleted_at IS NULL
), typed AS (
    SELECT cluster_id, n, bad, {_KINDS} AS type,
           -- n-th of per_cluster slots between ``since`` and a minute ago, in order per cluster
           since + (now() - interval '1 minute' - since) * ((n - 1 + jitter) / $1) AS at,
           (4 + n % 9) AS nodes
    FROM raw
), counted AS (
    SELECT *,
           count(*) FILTER (WHERE type = 'STATUS_CHANGED')
               OVER (PARTITION BY cluster_id ORDER BY n) AS changes_so_far
    FROM typed
), shaped AS (
    SELECT cluster_id, type, at, nodes,
           CASE WHEN changes_so_far % 2 = 1 THEN bad ELSE 'HEALTHY' END AS current,
           CASE WHEN changes_so_far % 2 = 1 THEN 'HEALTHY' ELSE bad END AS before
    FROM counted
)
INSERT INTO cluster_events (cluster_id, type, previous_status, status, changes, message, actor, at)
SELECT
    cluster_id,
    type,
    CASE type WHEN 'UPDATED' THEN NULL WHEN 'STATUS_CHANGED' THEN before ELSE current END,
    CASE type WHEN 'UPDATED' THEN NULL ELSE current END,
    CASE type
        WHEN 'STATUS_CHANGED' THEN jsonb_build_object(
            'status', jsonb_build_array(before, current),
            'ready_node_count', jsonb_build_array(nodes, CASE current WHEN 'HEALTHY'
                THEN nodes ELSE nodes / 2 END))
        WHEN 'CHECK_FAILED' THEN jsonb_build_object(
            'last_error_code', jsonb_build_array(NULL, 'TIMEOUT'),
            'last_error_message',
                jsonb_build_array(NULL, 'no answer from the API server within 30s'),
            'consecutive_failures', jsonb_build_array(0, 1))
        WHEN 'RECOVERED' THEN jsonb_build_object(
            'last_error_code', jsonb_build_array('TIMEOUT', NULL),
            'last_error_message',
                jsonb_build_array('no answer from the API server within 30s', NULL),
            'consecutive_failures', jsonb_build_array(3, 0))
        WHEN 'NODES_CHANGED' THEN jsonb_build_object(
            'node_count', jsonb_build_array(nodes, nodes + 1),
            'ready_node_count', jsonb_build_array(nodes, nodes + 1),
            'cpu_capacity_cores', jsonb_build_array((nodes * 8)::text, (nodes * 8 + 8)::text),
            'memory_capacity_bytes',
                jsonb_build_array(nodes::bigint * 34359738368, (nodes + 1)::bigint * 34359738368))
        WHEN 'UPDATED' THEN jsonb_build_object(
            'labels', jsonb_build_array(
                jsonb_build_object('env', 'prod', 'tier', 'web'),
                jsonb_build_object('env', 'prod', 'tier', 'web', 'owner', 'team-' || nodes)))
        ELSE jsonb_build_object('kubernetes_version', jsonb_build_array('v1.29.10', 'v1.30.6'))
    END,
    CASE type
        WHEN 'STATUS_CHANGED' THEN 'status ' || before || ' → ' || current
        WHEN 'CHECK_FAILED' THEN 'check failed: TIMEOUT'
        WHEN 'RECOVERED' THEN 'check succeeded after 3 failures'
        WHEN 'NODES_CHANGED' THEN (nodes + 1) || ' of ' || (nodes + 1) || ' nodes Ready'
        WHEN 'UPDATED' THEN 'updated labels'
        ELSE 'Kubernetes v1.29.10 → v1.30.6'
    END,
    CASE type WHEN 'UPDATED' THEN 'user:alice@example.com' END,
    at
FROM shaped
ORDER BY at
"""


async def seed_events(connection: asyncpg.Connection, *, per_cluster: int, days: int) -> int:
    """Replace the event log with ``per_cluster`` events per live cluster over ``days`` days
    (ids from 1, in time order); returns the newest id. The relay's position is set to it."""
    await connection.execute("TRUNCATE cluster_events RESTART IDENTITY")
    await connection.execute("SELECT setseed(0.42)")
    await connection.execute(_SEED, per_cluster, days)
    newest = int(await connection.fetchval("SELECT coalesce(max(id), 0) FROM cluster_events"))
    await connection.execute(
        "UPDATE event_relay SET last_event_id = $1, pruned_through = 0", newest
    )
    await connection.execute("VACUUM ANALYZE cluster_events")
    return newest
