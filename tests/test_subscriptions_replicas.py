"""Events across processes (postgres://) and across a PostgreSQL restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from fleetql.app import create_app
from fleetql.config import EventsSettings, Settings, load_settings
from fleetql.crypto import EncryptionKey
from fleetql.sim import Simulator
from tests.conftest import (
    GraphQLClient,
    RestartablePostgres,
    ThreadedServer,
    free_port,
    truncate,
)
from tests.wsclient import GraphQLWebSocket

FLEETQL = str(Path(sys.executable).parent / "fleetql")
IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
EVENTS = """
subscription { clusterStateChanged { kind clusterId previousStatus status cluster { name } } }
"""


@pytest.fixture
def replica(settings: Settings, database_url: str) -> Iterator[ThreadedServer]:
    """An API replica without a poller, taking its events from PostgreSQL."""
    shared = settings.model_copy(update={"events": EventsSettings(url="postgres://")})
    with ThreadedServer(create_app(shared), shared) as server:
        asyncio.run(truncate(database_url))
        yield server


@asynccontextmanager
async def serve_process(settings: Settings, database_url: str, **env: str) -> AsyncIterator[int]:
    """A second `fleetql serve` process sharing the database and the postgres:// events; yields
    its port once it answers, and checks that it stops cleanly."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLEETQL_")}
    environment |= {
        "DATABASE_URL": database_url,
        "FLEETQL_ENCRYPTION_KEY": settings.encryption.key or "",
        "FLEETQL_EVENTS__URL": "postgres://",
        "FLEETQL_SERVER__LOG_LEVEL": "warning",
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        *(FLEETQL, "serve", "--port", str(port), "--no-migrate"),
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(600):
                assert process.returncode is None, "the second server exited"
                try:
                    await http.get(f"http://127.0.0.1:{port}/livez")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        yield port
        assert process.returncode is None, "the second server exited"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    assert process.returncode in (0, -signal.SIGTERM), output


async def test_a_subscriber_on_one_replica_sees_a_change_polled_by_another(
    replica: ThreadedServer, settings: Settings, database_url: str
) -> None:
    async with (
        serve_process(settings, database_url, FLEETQL_POLLER__CHECK_INTERVAL="1s"),
        Simulator() as sim,
        httpx.AsyncClient(timeout=30) as http,
        GraphQLWebSocket.open(replica.ws_url) as ws,
    ):
        operation = await ws.subscribe(EVENTS)
        await ws.query("{ clusters(limit: 0) { total } }")
        sim.add_cluster("shared", node_count=2)
        api = GraphQLClient(http, replica.url)
        kubeconfig = yaml.safe_dump(sim.kubeconfig("shared"))
        payload = await api.data(IMPORT, {"input": {"name": "shared", "kubeconfig": kubeconfig}})
        cluster_id = payload["importCluster"]["cluster"]["id"]
        imported = (await ws.next_data(operation))["clusterStateChanged"]
        assert imported["kind"] == "IMPORTED" and imported["clusterId"] == cluster_id
        # Only the other process polls; its commit reaches this one through NOTIFY.
        changed = (await ws.next_data(operation, within=30))["clusterStateChanged"]
        assert changed == {
            "kind": "STATE_CHANGED",
            "clusterId": cluster_id,
            "previousStatus": "UNKNOWN",
            "status": "HEALTHY",
            "cluster": {"name": "shared"},
        }
        assert sim.cluster("shared").requests > 0


async def test_subscribers_are_told_to_resubscribe_after_postgres_restarts(
    private_postgres: RestartablePostgres,
) -> None:
    """Notifications sent while the LISTEN connection was down are lost: every subscriber's
    connection is closed with 1012, and a new subscription receives events again."""
    from websockets.exceptions import ConnectionClosed

    settings = load_settings(
        environ={},
        overrides={
            "database": {"url": private_postgres.url, "pool_size": 2},
            "encryption": {"key": EncryptionKey.generate().to_base64()},
            "poller": {"enabled": False},
            "events": {"url": "postgres://", "connection_init_timeout": "2s"},
        },
    )
    with ThreadedServer(create_app(settings), settings) as replica:
        async with Simulator() as sim, httpx.AsyncClient(timeout=30) as http:
            api = GraphQLClient(http, replica.url)

            async def import_cluster(name: str) -> str:
                sim.add_cluster(name)
                kubeconfig = yaml.safe_dump(sim.kubeconfig(name))
                data = await api.data(IMPORT, {"input": {"name": name, "kubeconfig": kubeconfig}})
                return str(data["importCluster"]["cluster"]["id"])

            async with GraphQLWebSocket.open(replica.ws_url) as ws:
                operation = await ws.subscribe(EVENTS)
                await ws.query("{ clusters(limit: 0) { total } }")
                await import_cluster("before")
                event = (await ws.next_data(operation))["clusterStateChanged"]
                assert event["kind"] == "IMPORTED"

                await private_postgres.stop()  # PostgreSQL goes away
                await private_postgres.start()
                await asyncio.wait_for(ws.closed.wait(), 30)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.connection.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
                assert "subscribe again" in closed.value.rcvd.reason

            # The client resubscribes and hears of what happens next.
            async with GraphQLWebSocket.open(replica.ws_url) as ws:
                operation = await ws.subscribe(EVENTS)
                await ws.query("{ clusters(limit: 0) { total } }")
                after = await import_cluster("after")
                event = (await ws.next_data(operation, within=20))["clusterStateChanged"]
                assert event["clusterId"] == after


async def test_a_console_resumes_on_another_replica_without_gap_or_repeat(
    replica: ThreadedServer, settings: Settings, database_url: str
) -> None:
    """A console loses its websocket to one replica, changes land meanwhile through the
    other, and it reconnects (through the load balancer) to the other with `after`."""
    resume = "subscription($after: ID) { clusterEvents(after: $after) { id clusterId type } }"
    async with (
        serve_process(settings, database_url, FLEETQL_POLLER__ENABLED="false") as port,
        Simulator() as sim,
        httpx.AsyncClient(timeout=30) as http,
    ):
        other_url = f"http://127.0.0.1:{port}/graphql"

        async def import_through(url: str, name: str) -> str:
            sim.add_cluster(name)
            kubeconfig = yaml.safe_dump(sim.kubeconfig(name))
            data = await GraphQLClient(http, url).data(
                IMPORT, {"input": {"name": name, "kubeconfig": kubeconfig}}
            )
            return str(data["importCluster"]["cluster"]["id"])

        async with GraphQLWebSocket.open(replica.ws_url) as ws:
            operation = await ws.subscribe(resume)
            await ws.query("{ clusters(limit: 0) { total } }")
            first = await import_through(other_url, "r-1")
            seen = (await ws.next_data(operation, within=20))["clusterEvents"]
            assert seen["clusterId"] == first
        missed = [await import_through(other_url, f"r-{n}") for n in (2, 3)]
        async with GraphQLWebSocket.open(f"ws://127.0.0.1:{port}/graphql") as ws:
            operation = await ws.subscribe(resume, {"after": seen["id"]})
            replayed = [(await ws.next_data(operation))["clusterEvents"] for _ in missed]
            assert [event["clusterId"] for event in replayed] == missed
            live = await import_through(replica.url, "r-4")
            event = (await ws.next_data(operation, within=20))["clusterEvents"]
            assert event["clusterId"] == live
            with pytest.raises(TimeoutError):
                await ws.next_message(operation, within=0.5)
