"""Cluster.availability and Cluster.flapping from the event log, over the API."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.conftest import GraphQLClient, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory

IMPORT = """
mutation($input: ImportClusterInput!) { importCluster(input: $input) { cluster { id } } }
"""
FIGURES = """
query($id: ID!, $window: String!) {
  cluster(id: $id) {
    flapping
    availability(window: $window) {
      ratio healthySeconds degradedSeconds unhealthySeconds unreachableSeconds unknownSeconds
      transitions
    }
  }
}
"""
HOUR = 3600


async def scripted_cluster(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    database_url: str,
    script: list[tuple[float, str]],
) -> str:
    """A cluster imported 30 h ago whose status changed ``hours_ago → status`` as scripted."""
    data = await api.data(IMPORT, {"input": {"name": "scripted", "kubeconfig": kubeconfigs.yaml()}})
    cluster_id = data["importCluster"]["cluster"]["id"]
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "UPDATE cluster_events SET at = now() - interval '30 hours' WHERE cluster_id = $1",
            uuid.UUID(cluster_id),
        )
        previous = "UNKNOWN"
        for hours_ago, status in script:
            await connection.execute(
                "INSERT INTO cluster_events (cluster_id, type, previous_status, status, at)"
                " VALUES ($1, 'STATUS_CHANGED', $2, $3, now() - make_interval(secs => $4))",
                uuid.UUID(cluster_id),
                previous,
                status,
                hours_ago * HOUR,
            )
            previous = status
    finally:
        await connection.close()
    return str(cluster_id)


async def test_availability_over_a_scripted_day(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, database_url: str
) -> None:
    cluster_id = await scripted_cluster(
        api,
        kubeconfigs,
        database_url,
        [(26, "HEALTHY"), (14, "UNREACHABLE"), (13, "DEGRADED"), (11, "HEALTHY")],
    )
    day = (await api.data(FIGURES, {"id": cluster_id, "window": "24h"}))["cluster"]
    figures = day["availability"]
    assert figures["healthySeconds"] == pytest.approx(21 * HOUR, abs=5)
    assert figures["unreachableSeconds"] == pytest.approx(1 * HOUR, abs=5)
    assert figures["degradedSeconds"] == pytest.approx(2 * HOUR, abs=5)
    assert figures["unknownSeconds"] == pytest.approx(0, abs=5)
    assert figures["ratio"] == pytest.approx(21 / 24, abs=0.001)
    assert figures["transitions"] == 3
    assert day["flapping"] is False
    # Over a week, the 30 h before the import count as unknown, not as an outage.
    week = (await api.data(FIGURES, {"id": cluster_id, "window": "7d"}))["cluster"]
    assert week["availability"]["unknownSeconds"] == pytest.approx((7 * 24 - 26) * HOUR, abs=5)
    assert week["availability"]["ratio"] == pytest.approx(23 / 26, abs=0.001)


async def test_many_changes_in_the_last_hour_are_flapping(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, database_url: str
) -> None:
    script = [(0.9 - n * 0.1, "HEALTHY" if n % 2 else "DEGRADED") for n in range(7)]
    cluster_id = await scripted_cluster(api, kubeconfigs, database_url, script)
    figures = (await api.data(FIGURES, {"id": cluster_id, "window": "1h"}))["cluster"]
    assert figures["flapping"] is True


async def test_a_bad_window_is_named(api: GraphQLClient, kubeconfigs: KubeconfigFactory) -> None:
    data = await api.data(IMPORT, {"input": {"name": "windowed", "kubeconfig": kubeconfigs.yaml()}})
    body = await api.post(FIGURES, {"id": data["importCluster"]["cluster"]["id"], "window": "1y"})
    assert body["errors"][0]["message"].startswith("window: ")
