"""fleet_totals, kept by triggers, against the full aggregate over the clusters themselves.

Writes go through the real code paths where fleetql has one (imports, updates, removals and
relabels over the API; checks through ``record_check``); restores and purges have no code path
yet, so they are the SQL an operator (or a future purge job) would run.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from fleetql.db import migrations
from fleetql.db.clusters import ClusterFilter, list_clusters
from fleetql.db.clusters import Ordering as ClusterOrdering
from fleetql.db.models import ClusterStatus
from fleetql.db.states import record_check
from fleetql.db.summary import FleetSummary, aggregate_fleet_summary, fleet_summary
from fleetql.db.totals import count_live_clusters, read_fleet_totals
from tests.conftest import GraphQLClient, PostgresServer, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
REMOVE = "mutation($id: ID!) { removeCluster(id: $id) { userErrors { code } } }"
RENAME = """
mutation($id: ID!, $input: UpdateClusterInput!) {
  updateCluster(id: $id, input: $input) { userErrors { code } }
}
"""
SET_LABELS = """
mutation($ids: [ID!]!, $add: [LabelInput!]) {
  setClusterLabels(ids: $ids, add: $add) { userErrors { code } }
}
"""

VERSIONS = [None, "v1.28.7", "v1.28.2", "v1.29.0-eks-1234", "1.30.1", "not-a-version"]
STATUSES = [status.value for status in ClusterStatus]


def random_check(rng: random.Random) -> dict[str, Any]:
    """What one check may write: sometimes nothing is known (an unreachable cluster)."""
    if rng.random() < 0.15:
        return {"status": "UNREACHABLE", "last_error_code": "UNREACHABLE"}
    nodes = rng.choice([None, 0, 1, 3, 50])
    return {
        "status": rng.choice(STATUSES),
        "kubernetes_version": rng.choice(VERSIONS),
        "node_count": nodes,
        "ready_node_count": None if nodes is None else rng.randint(0, nodes),
        "cpu_capacity_cores": rng.choice([None, Decimal("4"), Decimal("3.5"), Decimal("96.125")]),
        "cpu_allocatable_cores": rng.choice([None, Decimal("3.9"), Decimal("0.001")]),
        "memory_capacity_bytes": rng.choice([None, 2**30, 2**40, 2**62]),
        "memory_allocatable_bytes": rng.choice([None, 2**29, 2**62]),
    }


async def check(
    sessions: async_sessionmaker[AsyncSession], cluster_id: uuid.UUID, values: dict[str, Any]
) -> None:
    async with sessions() as session:
        await record_check(
            session, cluster_id, values, next_check_in=timedelta(hours=1), heartbeat=True
        )
        await session.commit()


async def execute(
    sessions: async_sessionmaker[AsyncSession], *statements: str, **params: Any
) -> None:
    async with sessions() as session:
        for statement in statements:
            await session.execute(text(statement), params)
        await session.commit()


async def restore(sessions: async_sessionmaker[AsyncSession], cluster_id: uuid.UUID) -> None:
    # The name may have been taken meanwhile by nobody: this fleet never reuses a name.
    await execute(sessions, "UPDATE clusters SET deleted_at = NULL WHERE id = :id", id=cluster_id)


async def purge(sessions: async_sessionmaker[AsyncSession], cluster_id: uuid.UUID) -> None:
    await execute(
        sessions,
        "DELETE FROM cluster_events WHERE cluster_id = :id",
        "DELETE FROM clusters WHERE id = :id",
        id=cluster_id,
    )


async def soft_remove(sessions: async_sessionmaker[AsyncSession], cluster_id: uuid.UUID) -> None:
    """A removal as a plain UPDATE (no row lock taken first, unlike removeCluster)."""
    await execute(
        sessions,
        "UPDATE clusters SET deleted_at = now() WHERE id = :id AND deleted_at IS NULL",
        id=cluster_id,
    )


async def both_summaries(
    sessions: async_sessionmaker[AsyncSession],
) -> tuple[FleetSummary, FleetSummary]:
    soon = datetime.now(UTC) + timedelta(days=14)
    async with sessions() as session:
        kept = await fleet_summary(session, ClusterFilter(), expiring_before=soon)
        counted = await aggregate_fleet_summary(session, ClusterFilter(), expiring_before=soon)
    return kept, counted


async def assert_totals_exact(sessions: async_sessionmaker[AsyncSession]) -> FleetSummary:
    kept, counted = await both_summaries(sessions)
    assert kept == counted
    async with sessions() as session:
        for status in ClusterStatus:
            statuses = ClusterFilter(statuses=[status])
            total, _ = await list_clusters(
                session, statuses, ordering=ClusterOrdering(), offset=0, limit=0
            )
            scanned = await session.execute(
                text(
                    "SELECT count(*) FROM clusters c JOIN cluster_states s ON s.cluster_id = c.id"
                    " WHERE c.deleted_at IS NULL AND s.status = :status"
                ),
                {"status": status.value},
            )
            assert total == scanned.scalar_one() == counted.by_status.get(status.value, 0)
        total, _ = await list_clusters(
            session, ClusterFilter(), ordering=ClusterOrdering(), offset=0, limit=0
        )
        assert total == counted.clusters
    return counted


async def import_clusters(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, names: list[str]
) -> list[uuid.UUID]:
    ids = []
    for name in names:
        data = await api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfigs.yaml()}})
        assert data["importCluster"]["userErrors"] == []
        ids.append(uuid.UUID(data["importCluster"]["cluster"]["id"]))
    return ids


async def test_an_empty_fleet_has_no_totals(
    api: GraphQLClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # The fixture emptied the fleet with TRUNCATE, which fires no row trigger.
    async with sessions() as session:
        assert await read_fleet_totals(session) == []
        assert await count_live_clusters(session) == 0
    assert await assert_totals_exact(sessions) == FleetSummary()


async def test_an_import_is_counted_in_the_next_read(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    [cluster_id] = await import_clusters(api, kubeconfigs, ["fresh"])
    counted = await assert_totals_exact(sessions)
    assert counted.clusters == 1
    assert counted.by_status == {"UNKNOWN": 1}
    await check(sessions, cluster_id, {"status": "HEALTHY", "node_count": 3})
    counted = await assert_totals_exact(sessions)
    assert (counted.by_status, counted.nodes) == ({"HEALTHY": 1}, 3)


async def test_random_writes_keep_the_totals_exact(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    rng = random.Random(20261126)
    live = await import_clusters(api, kubeconfigs, [f"c{n}" for n in range(8)])
    removed: list[uuid.UUID] = []
    imported = len(live)
    for step in range(120):
        roll = rng.random()
        if roll < 0.55 and live:
            values = random_check(rng)
            target = rng.choice(live)
            await check(sessions, target, values)
            if rng.random() < 0.3:
                await check(sessions, target, values)  # a check that changes nothing
        elif roll < 0.62:
            live += await import_clusters(api, kubeconfigs, [f"c{imported}"])
            imported += 1
        elif roll < 0.70 and live:
            target = live.pop(rng.randrange(len(live)))
            data = await api.data(REMOVE, {"id": str(target)})
            assert data["removeCluster"]["userErrors"] == []
            removed.append(target)
        elif roll < 0.75 and live:
            target = live.pop(rng.randrange(len(live)))
            await soft_remove(sessions, target)
            removed.append(target)
        elif roll < 0.83 and removed:
            target = removed.pop(rng.randrange(len(removed)))
            await restore(sessions, target)
            live.append(target)
        elif roll < 0.88 and removed:
            await purge(sessions, removed.pop(rng.randrange(len(removed))))
        elif roll < 0.92 and live:
            # Hard delete of a live cluster (the cascade deletes its state).
            await purge(sessions, live.pop(rng.randrange(len(live))))
        elif roll < 0.96 and live:
            target = rng.choice(live)
            data = await api.data(RENAME, {"id": str(target), "input": {"name": f"r{step}"}})
            assert data["updateCluster"]["userErrors"] == []
        elif live:
            ids = [str(cluster) for cluster in rng.sample(live, min(3, len(live)))]
            data = await api.data(
                SET_LABELS, {"ids": ids, "add": [{"key": "step", "value": str(step)}]}
            )
            assert data["setClusterLabels"]["userErrors"] == []
        if step % 10 == 0:
            await assert_totals_exact(sessions)
    counted = await assert_totals_exact(sessions)
    assert counted.clusters == len(live)


async def test_a_direct_state_delete_and_reinsert_are_counted(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    [cluster_id] = await import_clusters(api, kubeconfigs, ["lone"])
    await check(sessions, cluster_id, {"status": "DEGRADED", "node_count": 7})
    await execute(sessions, "DELETE FROM cluster_states WHERE cluster_id = :id", id=cluster_id)
    assert (await assert_totals_exact(sessions)).clusters == 0
    await execute(
        sessions,
        "INSERT INTO cluster_states (cluster_id, status, node_count) VALUES (:id, 'HEALTHY', 2)",
        id=cluster_id,
    )
    assert (await assert_totals_exact(sessions)).nodes == 2


async def totals_rows(sessions: async_sessionmaker[AsyncSession]) -> list[Any]:
    async with sessions() as session:
        rows = await session.execute(
            text("SELECT xmin::text, * FROM fleet_totals ORDER BY status, minor, shard")
        )
        return list(rows.all())


async def test_a_check_that_changes_no_total_writes_no_total(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    [cluster_id] = await import_clusters(api, kubeconfigs, ["steady"])
    values = {"status": "HEALTHY", "kubernetes_version": "v1.28.7", "node_count": 3}
    await check(sessions, cluster_id, values)
    before = await totals_rows(sessions)
    await check(sessions, cluster_id, values)
    # A patch release and an error message are not summed: still nothing to write.
    await check(sessions, cluster_id, values | {"kubernetes_version": "v1.28.9"})
    await check(sessions, cluster_id, values | {"last_error_message": "slow"})
    assert await totals_rows(sessions) == before
    await check(sessions, cluster_id, values | {"kubernetes_version": "v1.29.0"})
    assert await totals_rows(sessions) != before
    assert (await assert_totals_exact(sessions)).by_minor_version == {"v1.29": 1}


def deadlocked(error: DBAPIError) -> bool:
    return "deadlock detected" in str(error.orig)


async def test_concurrent_writers_keep_the_totals_exact(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    clusters = await import_clusters(api, kubeconfigs, [f"w{n}" for n in range(8)])
    deadlocks = 0

    async def writer(seed: int) -> None:
        nonlocal deadlocks
        rng = random.Random(seed)
        for _ in range(100):
            # Few clusters, many writers: checks, removals, restores and purges of one cluster
            # overlap.
            target = rng.choice(clusters)
            roll = rng.random()
            try:
                if roll < 0.7:
                    await check(sessions, target, random_check(rng))
                elif roll < 0.78:
                    await soft_remove(sessions, target)
                elif roll < 0.85:
                    # removeCluster locks the row FOR UPDATE first, then updates it.
                    await api.post(REMOVE, {"id": str(target)})
                elif roll < 0.97:
                    await restore(sessions, target)
                else:
                    await purge(sessions, target)
            except DBAPIError as error:
                # A check logging an event of a cluster a purge deletes (or a purge finding an
                # event logged meanwhile) fails on the events' foreign key, and rolls back.
                if "foreign key" in str(error.orig):
                    continue
                # PostgreSQL resolves a deadlock by failing one transaction, which rolls back
                # (the totals with it); counted, and bounded below.
                if not deadlocked(error):
                    raise
                deadlocks += 1

    await asyncio.gather(*(writer(seed) for seed in range(4)))
    await assert_totals_exact(sessions)
    assert deadlocks <= 5


async def test_the_api_reads_the_kept_totals(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, database_url: str
) -> None:
    await import_clusters(api, kubeconfigs, ["one", "two"])
    # Tamper with the kept totals: the unfiltered header and total must come from them, the
    # filtered ones from the clusters.
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "INSERT INTO fleet_totals (status, minor, shard, clusters)"
            " VALUES ('UNKNOWN', '', 99, 40)"
        )
    finally:
        await connection.close()
    data = await api.data(
        "{ fleetSummary { clusters } clusters(limit: 0) { total }"
        " unknown: clusters(limit: 0, filter: {status: [UNKNOWN]}) { total }"
        ' named: clusters(limit: 0, filter: {search: "o"}) { total } }'
    )
    assert data == {
        "fleetSummary": {"clusters": 42},
        "clusters": {"total": 42},
        "unknown": {"total": 42},
        "named": {"total": 2},
    }


@pytest.fixture
def scratch_database(postgres: PostgresServer) -> str:
    return postgres.create_database("fleetql_totals_scratch")


async def test_the_migration_backfills_and_downgrade_drops_the_totals(
    scratch_database: str,
) -> None:
    engine = create_async_engine(scratch_database)
    try:
        await migrations.upgrade(engine, "0004")
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO clusters (id, name, api_server_url, deleted_at)"
                    " SELECT gen_random_uuid(), 'b' || n, 'https://x',"
                    " CASE WHEN n % 5 = 0 THEN now() END FROM generate_series(1, 50) n"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO cluster_states (cluster_id, status, kubernetes_version,"
                    " node_count, cpu_capacity_cores, memory_capacity_bytes)"
                    " SELECT id, (ARRAY['HEALTHY','DEGRADED','UNKNOWN'])[1 + length(name) % 3],"
                    " 'v1.' || (20 + length(name)) || '.1', length(name), 1.5, 2^40"
                    " FROM clusters"
                )
            )
        await migrations.upgrade(engine)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        counted = await assert_totals_exact(sessions)
        assert counted.clusters == 40
        await migrations.downgrade(engine, "0005")
        async with engine.connect() as connection:
            left = await connection.execute(
                text(
                    "SELECT count(*) FROM pg_proc WHERE proname LIKE 'fleet_totals%'"
                    " UNION ALL SELECT count(*) FROM pg_tables WHERE tablename = 'fleet_totals'"
                )
            )
            assert left.scalars().all() == [0, 0]
    finally:
        await engine.dispose()
