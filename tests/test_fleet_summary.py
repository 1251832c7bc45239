"""fleetSummary against a fleet counted by hand, and the credential expiry filter."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from tests.conftest import GraphQLClient, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory

IMPORT = """
mutation($input: ImportClusterInput!) { importCluster(input: $input) { cluster { id } } }
"""
SUMMARY = """
query($filter: ClusterFilter) {
  fleetSummary(filter: $filter) {
    clusters nodes readyNodes cpuCapacityCores cpuAllocatableCores
    memoryCapacityBytes memoryAllocatableBytes credentialsExpiring
    byStatus { status clusters } byMinorVersion { minorVersion clusters }
  }
}
"""

# name, env, status, version, nodes, ready, cpu cap, cpu alloc, mem cap, mem alloc, expires in
FLEET = [
    ("a", "prod", "HEALTHY", "v1.28.7", 3, 3, "12", "11.5", 3 * 2**30, 2 * 2**30, 100),
    ("b", "prod", "DEGRADED", "v1.28.2", 5, 4, "20", "19", 5 * 2**30, 4 * 2**30, 3),
    ("c", "dev", "HEALTHY", "v1.29.0-eks-1", 2, 2, "8", "7.25", 2**30, 2**29, None),
    ("d", "dev", "UNKNOWN", None, None, None, None, None, None, None, 1),
]


async def test_summary_totals_match_a_hand_counted_fleet(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, database_url: str
) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for name, env, status, version, nodes, ready, cpu, alloc, mem, mem_alloc, days in FLEET:
            data = await api.data(
                IMPORT,
                {
                    "input": {
                        "name": name,
                        "kubeconfig": kubeconfigs.yaml(),
                        "labels": [{"key": "env", "value": env}],
                    }
                },
            )
            cluster_id = uuid.UUID(data["importCluster"]["cluster"]["id"])
            await connection.execute(
                "UPDATE cluster_states SET status = $2, kubernetes_version = $3, node_count = $4,"
                " ready_node_count = $5, cpu_capacity_cores = $6::numeric,"
                " cpu_allocatable_cores = $7::numeric, memory_capacity_bytes = $8,"
                " memory_allocatable_bytes = $9 WHERE cluster_id = $1",
                cluster_id,
                status,
                version,
                nodes,
                ready,
                cpu,
                alloc,
                mem,
                mem_alloc,
            )
            expires = None if days is None else datetime.now(UTC) + timedelta(days=days)
            await connection.execute(
                "UPDATE clusters SET credential_expires_at = $2 WHERE id = $1", cluster_id, expires
            )
    finally:
        await connection.close()

    summary = (await api.data(SUMMARY))["fleetSummary"]
    assert summary == {
        "clusters": 4,
        "nodes": 10,
        "readyNodes": 9,
        "cpuCapacityCores": 40.0,
        "cpuAllocatableCores": 37.75,
        "memoryCapacityBytes": 9 * 2**30,
        "memoryAllocatableBytes": 6 * 2**30 + 2**29,
        "credentialsExpiring": 2,  # within the 14-day warning: b (3 days) and d (1 day)
        "byStatus": [
            {"status": "DEGRADED", "clusters": 1},
            {"status": "HEALTHY", "clusters": 2},
            {"status": "UNKNOWN", "clusters": 1},
        ],
        "byMinorVersion": [
            {"minorVersion": None, "clusters": 1},
            {"minorVersion": "v1.28", "clusters": 2},
            {"minorVersion": "v1.29", "clusters": 1},
        ],
    }
    prod = (await api.data(SUMMARY, {"filter": {"labelSelector": "env=prod"}}))["fleetSummary"]
    assert prod["clusters"] == 2 and prod["nodes"] == 8 and prod["credentialsExpiring"] == 1

    soon = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    listed = await api.data(
        "query($before: DateTime!) { clusters(filter: {credentialExpiresBefore: $before})"
        " { items { name } } }",
        {"before": soon},
    )
    assert [item["name"] for item in listed["clusters"]["items"]] == ["b", "d"]


async def test_an_empty_fleet_sums_to_zero(api: GraphQLClient) -> None:
    summary = (await api.data(SUMMARY))["fleetSummary"]
    assert summary["clusters"] == 0 and summary["byStatus"] == [] and summary["nodes"] == 0
