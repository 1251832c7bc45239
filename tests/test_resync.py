"""resyncCluster and resyncClusters: a check now, through the poller, once across replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import yaml

from fleetql.app import create_app
from fleetql.config import PollerSettings, Settings
from fleetql.sim import Simulator
from tests.conftest import GraphQLClient, ThreadedServer, truncate

IMPORT = """
mutation($input: ImportClusterInput!) { importCluster(input: $input) { cluster { id } } }
"""
RESYNC = """
mutation($id: ID!, $wait: Boolean!) {
  resyncCluster(id: $id, wait: $wait) {
    cluster { status readyNodeCount lastCheckedAt } userErrors { field code message }
  }
}
"""
STATE = "query($id: ID!) { cluster(id: $id) { status lastCheckedAt } }"


def polling(settings: Settings, **poller: Any) -> Settings:
    values: dict[str, Any] = {
        "enabled": True,
        "check_interval": timedelta(minutes=30),
        "client_timeout": timedelta(seconds=2),
        "retry_attempts": 0,
        "status_threshold": 1,
    }
    return settings.model_copy(update={"poller": PollerSettings(**(values | poller))})


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator() as simulator:
        yield simulator


async def import_checked(api: GraphQLClient, sim: Simulator, name: str) -> str:
    sim.add_cluster(name, node_count=3)
    data = await api.data(
        IMPORT, {"input": {"name": name, "kubeconfig": yaml.safe_dump(sim.kubeconfig(name))}}
    )
    cluster_id = str(data["importCluster"]["cluster"]["id"])
    for _ in range(200):  # a new cluster is checked within about a second
        if (await api.data(STATE, {"id": cluster_id}))["cluster"]["status"] != "UNKNOWN":
            return cluster_id
        await asyncio.sleep(0.05)
    raise AssertionError("the new cluster was not checked")


async def test_resync_checks_now_and_returns_what_the_check_wrote(
    settings: Settings, database_url: str, server: ThreadedServer, sim: Simulator
) -> None:
    await truncate(database_url)
    live = polling(settings)
    with ThreadedServer(create_app(live, migrate=False), live) as replica:
        async with httpx.AsyncClient(timeout=30) as http:
            api = GraphQLClient(http, replica.url)
            cluster_id = await import_checked(api, sim, "fixed")
            sim.cluster("fixed").spec.ready_nodes = 1
            payload = (await api.data(RESYNC, {"id": cluster_id, "wait": True}))["resyncCluster"]
            assert payload["userErrors"] == []
            assert payload["cluster"]["status"] == "DEGRADED"
            assert payload["cluster"]["readyNodeCount"] == 1

            queued = await api.data(
                'mutation { resyncClusters(filter: {search: "fix"}) { queued } }'
            )
            assert queued["resyncClusters"]["queued"] == 1
            unknown = await api.data(
                RESYNC, {"id": "00000000-0000-0000-0000-000000000003", "wait": False}
            )
            assert [e["code"] for e in unknown["resyncCluster"]["userErrors"]] == ["NOT_FOUND"]


async def test_with_two_replicas_a_resync_is_one_check(
    settings: Settings, database_url: str, server: ThreadedServer, sim: Simulator
) -> None:
    await truncate(database_url)
    live = polling(settings)
    with (
        ThreadedServer(create_app(live, migrate=False), live) as first,
        ThreadedServer(create_app(live, migrate=False), live) as second,
    ):
        async with httpx.AsyncClient(timeout=30) as http:
            api = GraphQLClient(http, first.url)
            cluster_id = await import_checked(api, sim, "shared")
            checks = sim.cluster("shared").requests_by_path["/version"]
            other = GraphQLClient(http, second.url)
            results = await asyncio.gather(
                api.data(RESYNC, {"id": cluster_id, "wait": True}),
                other.data(RESYNC, {"id": cluster_id, "wait": True}),
            )
            assert all(r["resyncCluster"]["userErrors"] == [] for r in results)
            await asyncio.sleep(1.5)  # room for a second check, if there were to be one
    assert sim.cluster("shared").requests_by_path["/version"] == checks + 1


async def test_without_a_poller_the_wait_ends_with_a_timeout(
    settings: Settings, database_url: str, server: ThreadedServer, sim: Simulator
) -> None:
    await truncate(database_url)
    idle = polling(settings, enabled=False, client_timeout=timedelta(milliseconds=500))
    with ThreadedServer(create_app(idle, migrate=False), idle) as replica:
        async with httpx.AsyncClient(timeout=30) as http:
            api = GraphQLClient(http, replica.url)
            sim.add_cluster("orphan")
            data = await api.data(
                IMPORT,
                {
                    "input": {
                        "name": "orphan",
                        "kubeconfig": yaml.safe_dump(sim.kubeconfig("orphan")),
                    }
                },
            )
            cluster_id = data["importCluster"]["cluster"]["id"]
            payload = (await api.data(RESYNC, {"id": cluster_id, "wait": True}))["resyncCluster"]
    assert [e["code"] for e in payload["userErrors"]] == ["TIMEOUT"]
    assert payload["cluster"]["status"] == "UNKNOWN"


async def test_removing_a_cluster_closes_its_pooled_client(
    settings: Settings, database_url: str, server: ThreadedServer, sim: Simulator
) -> None:
    await truncate(database_url)
    live = polling(settings)
    with ThreadedServer(create_app(live, migrate=False), live) as replica:
        pool = replica.app.state.poller.pool
        async with httpx.AsyncClient(timeout=30) as http:
            api = GraphQLClient(http, replica.url)
            cluster_id = await import_checked(api, sim, "pooled")
            assert len(pool) == 1
            closed = pool.stats.closed
            await api.data(
                "mutation($id: ID!) { removeCluster(id: $id) { userErrors { code } } }",
                {"id": cluster_id},
            )
            for _ in range(100):
                if len(pool) == 0:
                    break
                await asyncio.sleep(0.05)
    assert len(pool) == 0 and pool.stats.closed == closed + 1
