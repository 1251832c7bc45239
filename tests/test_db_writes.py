"""The two write paths in Core statements: an import's single INSERT (its record comes from the
insert, not a read-back) and a check's UPDATE (one cached statement per shape of result)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.db.states import claim_due_clusters, record_check, release_claims
from tests.conftest import GraphQLClient
from tests.kubeconfigs import KubeconfigFactory

FIELDS = """
  id name description apiServerUrl labels { key value } status nodeCount readyNodeCount
  cpuCapacityCores cpuAllocatableCores cpuUsageCores memoryCapacityBytes memoryAllocatableBytes
  memoryUsageBytes kubernetesVersion lastHeartbeatAt lastCheckedAt lastError { code message }
  consecutiveFailures createdAt updatedAt
"""
IMPORT = f"""
mutation($input: ImportClusterInput!) {{
  importCluster(input: $input) {{ cluster {{ {FIELDS} }} userErrors {{ field code message }} }}
}}
"""
DETAILS = f"query($id: ID!) {{ cluster(id: $id) {{ {FIELDS} }} }}"
HEALTHY = {"status": "HEALTHY", "node_count": 3, "ready_node_count": 3, "consecutive_failures": 0}


async def import_cluster(api: GraphQLClient, kubeconfigs: KubeconfigFactory, name: str) -> Any:
    variables = {"input": {"name": name, "kubeconfig": kubeconfigs.yaml()}}
    return (await api.data(IMPORT, variables))["importCluster"]


async def test_imported_record_is_exactly_what_a_later_read_returns(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    variables = {
        "input": {
            "name": "as-stored",
            "description": "built from the insert",
            "kubeconfig": kubeconfigs.base64(server="https://k8s.example.com:6443"),
            "labels": [{"key": "env", "value": "prod"}, {"key": "tier", "value": "web"}],
        }
    }
    payload = (await api.data(IMPORT, variables))["importCluster"]
    assert payload["userErrors"] == []
    imported = payload["cluster"]
    read = (await api.data(DETAILS, {"id": imported["id"]}))["cluster"]
    assert imported == read
    assert imported["status"] == "UNKNOWN" and imported["consecutiveFailures"] == 0
    assert imported["createdAt"] == imported["updatedAt"]


async def test_concurrent_imports_of_one_name_store_one_cluster_and_one_event(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    payloads = await asyncio.gather(
        *(import_cluster(api, kubeconfigs, "contested") for _ in range(6))
    )
    stored = [payload for payload in payloads if payload["cluster"] is not None]
    refused = [payload for payload in payloads if payload["cluster"] is None]
    assert len(stored) == 1
    assert [[error["code"] for error in p["userErrors"]] for p in refused] == [["NAME_TAKEN"]] * 5
    async with sessions() as session:
        clusters = await session.scalar(text("SELECT count(*) FROM clusters"))
        states = await session.scalar(text("SELECT count(*) FROM cluster_states"))
        events = (await session.execute(text("SELECT cluster_id, type FROM cluster_events"))).all()
    assert clusters == 1 and states == 1
    assert [(str(row.cluster_id), row.type) for row in events] == [
        (stored[0]["cluster"]["id"], "IMPORTED")
    ]


async def test_record_check_leaves_a_removed_cluster_alone(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    cluster_id = uuid.UUID((await import_cluster(api, kubeconfigs, "gone"))["cluster"]["id"])
    async with sessions() as session:
        await session.execute(
            text("UPDATE clusters SET deleted_at = now() WHERE id = :id"), {"id": cluster_id}
        )
        change = await record_check(
            session, cluster_id, HEALTHY, next_check_in=timedelta(minutes=5), heartbeat=True
        )
        await session.commit()
        state = (
            await session.execute(
                text("SELECT status, last_checked_at FROM cluster_states WHERE cluster_id = :id"),
                {"id": cluster_id},
            )
        ).one()
    assert change is None
    assert (state.status, state.last_checked_at) == ("UNKNOWN", None)


async def test_record_check_refuses_a_column_the_state_does_not_have(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    cluster_id = uuid.UUID((await import_cluster(api, kubeconfigs, "typo"))["cluster"]["id"])
    async with sessions() as session:
        with pytest.raises(ValueError, match="no column nodes_count"):
            await record_check(
                session,
                cluster_id,
                HEALTHY | {"nodes_count": 3},
                next_check_in=timedelta(minutes=5),
                heartbeat=True,
            )


async def test_checks_of_every_shape_record_their_own_columns_only(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A success sets the heartbeat, a failure leaves it and the node counts as they were; the
    statements are cached per shape, so a shape seen before must not leak into another."""
    cluster_id = uuid.UUID((await import_cluster(api, kubeconfigs, "shapes"))["cluster"]["id"])
    query = text(
        "SELECT status, node_count, last_heartbeat_at, last_error_code, consecutive_failures, "
        "claimed_until FROM cluster_states WHERE cluster_id = :id"
    )
    failed = {"status": "HEALTHY", "last_error_code": "TIMEOUT", "consecutive_failures": 1}
    rows = []
    for values, heartbeat in ((HEALTHY, True), (failed, False), (HEALTHY, True), (failed, False)):
        async with sessions() as session:
            await record_check(
                session, cluster_id, values, next_check_in=timedelta(minutes=5), heartbeat=heartbeat
            )
            await session.commit()
            rows.append((await session.execute(query, {"id": cluster_id})).one())
    first_success, first_failure, second_success, second_failure = rows
    assert first_success.last_heartbeat_at is not None and first_success.node_count == 3
    assert first_failure.last_heartbeat_at == first_success.last_heartbeat_at
    assert first_failure.node_count == 3 and first_failure.last_error_code == "TIMEOUT"
    assert second_success.last_heartbeat_at > first_success.last_heartbeat_at
    assert second_failure.consecutive_failures == 1
    assert all(row.claimed_until is None for row in rows)


async def test_claims_take_the_limit_and_release_gives_them_back(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for index in range(3):
        await import_cluster(api, kubeconfigs, f"due-{index}")
    async with sessions() as session:
        first = await claim_due_clusters(session, limit=2, lease=timedelta(minutes=1))
        await session.commit()
    async with sessions() as session:
        second = await claim_due_clusters(session, limit=2, lease=timedelta(minutes=1))
        await session.commit()
    assert len(first) == 2 and len(second) == 1
    assert not {due.id for due in first} & {due.id for due in second}
    async with sessions() as session:
        assert await claim_due_clusters(session, limit=5, lease=timedelta(minutes=1)) == []
        released = await release_claims(session, [due.id for due in first])
        await session.commit()
    assert released == 2
    async with sessions() as session:
        again = await claim_due_clusters(session, limit=5, lease=timedelta(minutes=1))
        await session.commit()
    assert {due.id for due in again} == {due.id for due in first}
