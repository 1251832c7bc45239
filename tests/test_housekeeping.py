"""Pruning the event log and flagging expiring credentials, once however often it runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.config import ClusterManagerSettings
from fleetql.housekeeping import housekeep_once
from fleetql.sim.tls import CertificateAuthority
from tests.conftest import GraphQLClient, asyncpg_dsn
from tests.kubeconfigs import KubeconfigFactory
from tests.test_lifecycle import _certificate_kubeconfig

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
EVENTS = """
query($types: [ClusterEventType!]) {
  events(filter: {types: $types}, first: 50) { items { clusterId type message } }
}
"""


async def test_old_events_are_pruned_in_batches_and_the_watermark_moves(
    api: GraphQLClient,
    kubeconfigs: KubeconfigFactory,
    sessions: async_sessionmaker[AsyncSession],
    database_url: str,
) -> None:
    data = await api.data(IMPORT, {"input": {"name": "aged", "kubeconfig": kubeconfigs.yaml()}})
    cluster_id = uuid.UUID(data["importCluster"]["cluster"]["id"])
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(
            "INSERT INTO cluster_events (cluster_id, type, status, at) SELECT $1, "
            "'NODES_CHANGED', 'HEALTHY', now() - interval '40 days' FROM generate_series(1, 2500)",
            cluster_id,
        )
        newest_old = await connection.fetchval("SELECT max(id) FROM cluster_events")
        report = await housekeep_once(sessions, ClusterManagerSettings())
        remaining = await connection.fetch(
            "SELECT type FROM cluster_events WHERE cluster_id = $1", cluster_id
        )
        watermark = await connection.fetchval("SELECT pruned_through FROM event_relay")
    finally:
        await connection.close()
    assert report.pruned == 2500
    assert [row["type"] for row in remaining] == ["IMPORTED"]
    assert watermark >= newest_old


async def test_an_expiring_credential_is_flagged_once(
    api: GraphQLClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    ca = CertificateAuthority().ca_pem
    for name, days in (("expiring", 3), ("fresh", 100)):
        kubeconfig = _certificate_kubeconfig("https://127.0.0.1:6443", ca, days=days)
        data = await api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfig}})
        assert data["importCluster"]["userErrors"] == [], data
    first = await housekeep_once(sessions, ClusterManagerSettings())
    again = await housekeep_once(sessions, ClusterManagerSettings())
    assert (first.expiring, again.expiring) == (1, 0)
    events = (await api.data(EVENTS, {"types": ["CREDENTIAL_EXPIRING"]}))["events"]["items"]
    assert len(events) == 1
    assert events[0]["message"].startswith("the credential of 'expiring' expires at")
    # A month later (or a year) the fresh one is flagged too, once.
    later = await housekeep_once(
        sessions, ClusterManagerSettings(), now=datetime.now(UTC) + timedelta(days=95)
    )
    assert later.expiring == 1
