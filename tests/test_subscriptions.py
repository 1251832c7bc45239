"""clusterStateChanged over real websockets, against a server whose poller checks the simulator."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from fleetql.app import create_app
from fleetql.config import EventsSettings, PollerSettings, Settings
from fleetql.sim import Simulator
from tests.conftest import GraphQLClient, ThreadedServer, asyncpg_dsn, truncate
from tests.wsclient import PROTOCOLS, TRANSPORT_WS, GraphQLWebSocket

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}
"""
CLUSTER_FIELDS = """
  id name status nodeCount readyNodeCount kubernetesVersion consecutiveFailures
  cpuCapacityCores memoryCapacityBytes lastCheckedAt lastHeartbeatAt updatedAt
  labels { key value } lastError { code message }
"""
EVENTS = f"""
subscription($filter: ClusterEventFilter) {{
  clusterStateChanged(filter: $filter) {{
    kind clusterId previousStatus status changedFields at
    cluster {{ {CLUSTER_FIELDS} }}
  }}
}}
"""
CLUSTER = f"query($id: ID!) {{ cluster(id: $id) {{ {CLUSTER_FIELDS} }} }}"
SMALL_EVENTS = "subscription { clusterStateChanged { kind clusterId } }"
QUEUE_SIZE = 64


@pytest.fixture(scope="module")
def live_server(settings: Settings) -> Iterator[ThreadedServer]:
    """A server with its poller on, checking every cluster about once a second."""
    live = settings.model_copy(
        update={
            "poller": PollerSettings(
                enabled=True,
                check_interval=timedelta(seconds=1),
                client_timeout=timedelta(seconds=2),
                retry_attempts=0,
                status_threshold=1,
            ),
            "events": EventsSettings(
                subscriber_queue_size=QUEUE_SIZE,
                connection_init_timeout=timedelta(seconds=1),
            ),
        }
    )
    with ThreadedServer(create_app(live), live) as server:
        yield server


@dataclass
class Live:
    server: ThreadedServer
    api: GraphQLClient
    sim: Simulator
    database_url: str

    async def add(self, name: str, labels: dict[str, str] | None = None, **spec: Any) -> str:
        self.sim.add_cluster(name, **spec)
        variables = {
            "input": {
                "name": name,
                "kubeconfig": yaml.safe_dump(self.sim.kubeconfig(name)),
                "labels": [{"key": k, "value": v} for k, v in (labels or {}).items()],
            }
        }
        payload = (await self.api.data(IMPORT, variables))["importCluster"]
        assert payload["userErrors"] == [], payload
        return str(payload["cluster"]["id"])

    def websocket(
        self, protocol: str = TRANSPORT_WS, **options: Any
    ) -> Any:  # an async context manager of GraphQLWebSocket
        return GraphQLWebSocket.open(self.server.ws_url, protocol, **options)


@pytest.fixture
async def live(live_server: ThreadedServer, database_url: str) -> AsyncIterator[Live]:
    await truncate(database_url)
    async with Simulator() as sim, httpx.AsyncClient(timeout=30) as http:
        yield Live(live_server, GraphQLClient(http, live_server.url), sim, database_url)


async def next_event(ws: GraphQLWebSocket, operation: str, within: float = 10.0) -> dict[str, Any]:
    data = await ws.next_data(operation, within)
    return data["clusterStateChanged"]  # type: ignore[no-any-return]


async def event_where(
    ws: GraphQLWebSocket, operation: str, wanted: Any, within: float = 10.0
) -> dict[str, Any]:
    """The first event satisfying ``wanted``, skipping others."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        event = await next_event(ws, operation, max(0.1, deadline - loop.time()))
        if wanted(event):
            return event


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_import_is_an_event_on_both_protocols(live: Live, protocol: str) -> None:
    async with live.websocket(protocol) as ws:
        operation = await ws.subscribe(EVENTS)
        cluster_id = await live.add("imported", labels={"env": "prod"})
        event = await next_event(ws, operation)
    assert event["kind"] == "IMPORTED"
    assert event["clusterId"] == cluster_id
    assert event["previousStatus"] is None and event["status"] == "UNKNOWN"
    assert event["cluster"]["name"] == "imported"
    assert event["cluster"]["labels"] == [{"key": "env", "value": "prod"}]


async def test_a_poll_that_changes_status_is_an_event_with_the_committed_state(
    live: Live,
) -> None:
    async with live.websocket() as ws:
        operation = await ws.subscribe(EVENTS)
        cluster_id = await live.add("changing", node_count=3)
        healthy = await event_where(ws, operation, lambda e: e["status"] == "HEALTHY")
        assert healthy["kind"] == "STATE_CHANGED" and healthy["previousStatus"] == "UNKNOWN"
        assert {"status", "nodeCount", "readyNodeCount", "kubernetesVersion"} <= set(
            healthy["changedFields"]
        )
        assert healthy["cluster"]["nodeCount"] == 3

        live.sim.cluster("changing").spec.ready_nodes = 1
        degraded = await next_event(ws, operation)
        fresh = (await live.api.data(CLUSTER, {"id": cluster_id}))["cluster"]

    assert degraded["previousStatus"] == "HEALTHY" and degraded["status"] == "DEGRADED"
    assert degraded["changedFields"] == ["status", "readyNodeCount"]
    # The event's cluster is what was committed: a fresh query shows the same (nothing has
    # changed since, only lastCheckedAt moves on with each check).
    for state in (degraded["cluster"], fresh):
        state.pop("lastCheckedAt")
        state.pop("updatedAt")
    assert degraded["cluster"] == fresh
    assert fresh["readyNodeCount"] == 1


async def test_no_event_when_a_check_changes_nothing(live: Live) -> None:
    async with live.websocket() as ws:
        operation = await ws.subscribe(EVENTS)
        cluster_id = await live.add("steady")
        await event_where(ws, operation, lambda e: e["status"] == "HEALTHY")
        checked = (await live.api.data(CLUSTER, {"id": cluster_id}))["cluster"]["lastCheckedAt"]
        requests = live.sim.cluster("steady").requests
        await asyncio.sleep(2.5)
        again = (await live.api.data(CLUSTER, {"id": cluster_id}))["cluster"]["lastCheckedAt"]
        assert again != checked and live.sim.cluster("steady").requests > requests
        with pytest.raises(TimeoutError):
            await next_event(ws, operation, within=0.3)


async def test_filters_by_id_label_selector_and_status(live: Live) -> None:
    async with live.websocket() as ws:
        first = await live.add("one", labels={"env": "prod", "tier": "web"})
        by_id = await ws.subscribe(EVENTS, {"filter": {"ids": [first]}})
        by_label = await ws.subscribe(
            EVENTS, {"filter": {"labels": [{"key": "env", "value": "dev"}]}}
        )
        by_selector = await ws.subscribe(EVENTS, {"filter": {"labelSelector": "tier in (db)"}})
        by_status = await ws.subscribe(EVENTS, {"filter": {"status": ["DEGRADED"]}})
        everything = await ws.subscribe(EVENTS)
        second = await live.add("two", labels={"env": "dev", "tier": "db"})
        # Both become HEALTHY; then "two" degrades and recovers.
        seen: list[dict[str, Any]] = []
        while not {(first, "HEALTHY"), (second, "HEALTHY")} <= {
            (e["clusterId"], e["status"]) for e in seen
        }:
            seen.append(await next_event(ws, everything))
        live.sim.cluster("two").spec.ready_nodes = 1
        await event_where(ws, everything, lambda e: e["status"] == "DEGRADED")
        live.sim.cluster("two").spec.ready_nodes = None
        await event_where(ws, everything, lambda e: e["previousStatus"] == "DEGRADED")
        live.sim.cluster("one").spec.version = "v1.29.4"
        await event_where(ws, everything, lambda e: "kubernetesVersion" in e["changedFields"])
        await asyncio.sleep(0.2)

        def drained(operation: str) -> list[tuple[str, str | None, str]]:
            events = [data["clusterStateChanged"] for data in ws.drain(operation)]
            return [(e["clusterId"], e["previousStatus"], e["status"]) for e in events]

        id_events = drained(by_id)
        assert id_events and {cluster for cluster, _, _ in id_events} == {first}
        assert id_events[-1] == (first, "HEALTHY", "HEALTHY")  # the upgrade
        label_events = drained(by_label)
        assert label_events and {cluster for cluster, _, _ in label_events} == {second}
        assert drained(by_selector) == label_events
        # Entering and leaving DEGRADED both concern a DEGRADED watcher.
        assert drained(by_status) == [
            (second, "HEALTHY", "DEGRADED"),
            (second, "DEGRADED", "HEALTHY"),
        ]


@pytest.mark.parametrize(
    ("filter", "argument"),
    [
        ({"labelSelector": "env in (a"}, "filter.labelSelector"),
        ({"ids": ["not-a-uuid"]}, "filter.ids[0]"),
        ({"labels": [{"key": "bad key!", "value": "x"}]}, "filter.labels[0].key"),
    ],
)
async def test_a_bad_filter_is_an_error_naming_the_argument(
    live: Live, filter: dict[str, Any], argument: str
) -> None:
    async with live.websocket() as ws:
        operation = await ws.subscribe(EVENTS, {"filter": filter})
        message = await ws.next_message(operation)
    assert message["type"] in ("error", "next", "data"), message
    payload = message["payload"]
    errors = payload if isinstance(payload, list) else payload["errors"]
    assert errors[0]["message"].startswith(f"{argument}: "), errors


async def test_two_hundred_subscribers_receive_the_same_event(live: Live) -> None:
    subscribed = 0
    all_subscribed = asyncio.Event()
    received: list[dict[str, Any]] = []

    async def subscriber() -> None:
        nonlocal subscribed
        async with live.websocket() as ws:
            operation = await ws.subscribe(
                "subscription { clusterStateChanged { kind clusterId } }"
            )
            # A query on the same connection answers after the subscription is registered.
            await ws.query("{ clusters(limit: 0) { total } }")
            subscribed += 1
            if subscribed == 200:
                all_subscribed.set()
            received.append(await next_event(ws, operation, within=30))

    async with asyncio.TaskGroup() as group:
        for _ in range(200):
            group.create_task(subscriber())
        await asyncio.wait_for(all_subscribed.wait(), 60)
        cluster_id = await live.add("crowd")
    assert len(received) == 200
    assert all(event == {"kind": "IMPORTED", "clusterId": cluster_id} for event in received)


async def test_subscribe_then_query_misses_nothing(live: Live) -> None:
    """A change is committed at a random moment around a client's subscribe and query (the
    poller checks about once a second); the query or a later event always shows it."""
    cluster_id = await live.add("racing", node_count=4)
    async with live.websocket() as watcher:
        watching = await watcher.subscribe(EVENTS)
        await event_where(watcher, watching, lambda e: e["status"] == "HEALTHY")
    spec = live.sim.cluster("racing").spec
    for ready in (3, 4, 2, 4, 1, 4):
        spec.ready_nodes = ready
        await asyncio.sleep(0.1 * ready)  # vary where the commit falls
        async with live.websocket() as ws:
            operation = await ws.subscribe(EVENTS, {"filter": {"ids": [cluster_id]}})
            latest = (await ws.query(CLUSTER, {"id": cluster_id}))["cluster"]["readyNodeCount"]
            while latest != ready:
                event = await next_event(ws, operation, within=5)
                latest = event["cluster"]["readyNodeCount"]


async def test_a_client_that_never_sends_connection_init_is_closed(live: Live) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    subprotocols: Any = [TRANSPORT_WS]
    async with connect(live.server.ws_url, subprotocols=subprotocols) as connection:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(connection.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408


async def test_a_stalled_client_is_cut_off_while_others_go_on(live: Live) -> None:
    """A client that stops reading fills its TCP window; its queue overflows and the server
    drops it, while a client that reads gets every event."""
    from websockets.exceptions import ConnectionClosed

    # Bulky, uncompressed events (ten long labels each) fill the socket buffers sooner.
    cluster_id = await live.add("busy", labels={f"note-{i}": "x" * 60 for i in range(10)})
    bus = live.server.app.state.services.events
    # A small receive window, set before connecting, so the stall shows on the server soon.
    stalled_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled_socket.connect(("127.0.0.1", live.server.port))
    async with (
        live.websocket() as healthy,
        live.websocket(sock=stalled_socket, max_queue=1, compression=None) as stalled,
    ):
        wide = await healthy.subscribe(EVENTS)
        await stalled.subscribe(EVENTS)
        await healthy.query("{ clusters(limit: 0) { total } }")
        stalled.stop_reading()
        received = 0
        writer = await asyncpg.connect(asyncpg_dsn(live.database_url))
        try:
            for _ in range(400):
                # Logged events, as a burst of checks would write them; the relay sends them.
                await writer.execute(
                    "INSERT INTO cluster_events (cluster_id, type, previous_status, status) "
                    "SELECT $1, 'NODES_CHANGED', 'HEALTHY', 'HEALTHY' FROM generate_series(1, $2)",
                    uuid.UUID(cluster_id),
                    QUEUE_SIZE // 2,
                )
                for _ in range(QUEUE_SIZE // 2):
                    await next_event(healthy, wide)
                    received += 1
                if bus.overflows:
                    break
        finally:
            await writer.close()
        assert bus.overflows == 1, f"the stalled client was not cut off after {received} events"
        # It is dropped: reading now finds the end of the connection.
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await stalled.connection.recv()
        # The reading client goes on.
        live.sim.cluster("busy").spec.ready_nodes = 1
        event = await event_where(healthy, wide, lambda e: e["status"] == "DEGRADED")
        assert event["clusterId"] == cluster_id


async def test_a_peer_that_stops_answering_pings_is_dropped(
    settings: Settings, live_server: ThreadedServer
) -> None:
    """Server pings find dead consoles that TCP alone would keep for hours."""
    from websockets.exceptions import ConnectionClosed

    pinging = settings.model_copy(
        update={
            "events": EventsSettings(
                ping_interval=timedelta(milliseconds=300), ping_timeout=timedelta(seconds=2)
            )
        }
    )
    with ThreadedServer(create_app(pinging, migrate=False), pinging) as server:
        async with GraphQLWebSocket.open(server.ws_url) as answering:
            await answering.subscribe(SMALL_EVENTS)
            async with GraphQLWebSocket.open(server.ws_url) as silent:
                await silent.subscribe(SMALL_EVENTS)
                silent.stop_reading()
                silent.connection.transport.pause_reading()  # no pongs from here on
                await asyncio.sleep(3.5)  # a ping, then the two seconds it had to answer
                silent.connection.transport.resume_reading()
                with pytest.raises(ConnectionClosed) as closed:
                    async with asyncio.timeout(5):
                        while True:
                            await silent.connection.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
            # The one that answers stays connected and usable.
            assert (await answering.query("{ clusters(limit: 0) { total } }"))["clusters"]


async def test_an_event_is_executed_once_per_cohort_of_identical_subscriptions(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consoles sending the same document share one execution of each event (the fan-out
    benchmark found per-subscriber execution to be 90 % of the server's work)."""
    from fleetql.resolvers import history

    calls: list[str] = []
    original = history.cluster_is_flapping

    async def counted(context: Any, cluster_id: Any, **kw: Any) -> bool:
        calls.append(str(cluster_id))
        return await original(context, cluster_id, **kw)

    monkeypatch.setattr(history, "cluster_is_flapping", counted)
    document = (
        "subscription($f: ClusterEventFilter) {"
        " clusterStateChanged(filter: $f) { id cluster { flapping } } }"
    )
    async with (
        live.websocket() as one,
        live.websocket() as two,
        live.websocket() as three,
    ):
        # Only imports: the poller's first check of the cluster must not add executions.
        imports = {"types": ["IMPORTED"]}
        same = [await ws.subscribe(document, {"f": imports}) for ws in (one, two)]
        other = await three.subscribe(document, {"f": imports | {"labels": []}})
        for ws in (one, two, three):
            await ws.query("{ clusters(limit: 0) { total } }")
        cluster_id = await live.add("cohort")
        got = [await ws.next_data(op) for ws, op in ((one, same[0]), (two, same[1]))]
        got.append(await three.next_data(other))
    assert all(g["clusterStateChanged"]["cluster"]["flapping"] is False for g in got)
    # One execution for the two identical subscriptions, one for the third (other variables).
    assert calls.count(cluster_id) == 2
