"""Fan-out over real websockets: a cohort's encoded frame sent to every member, never across
principal scopes, and coalesced subscriptions (``clusterStatesChanged``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from graphql import GraphQLError
from strawberry.types import ExecutionResult
from websockets.asyncio.client import ClientConnection, connect

from fleetql.app import create_app
from fleetql.config import Settings
from fleetql.events.bus import Delivery, Subscription
from fleetql.schema.fanout import encode_payload
from tests.authkit import AuthClient, Issuer, jwt_settings
from tests.conftest import ThreadedServer, asyncpg_dsn, truncate
from tests.kubeconfigs import KubeconfigFactory
from tests.wsclient import LEGACY_WS, TRANSPORT_WS, GraphQLWebSocket

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { code message } }
}"""
UPDATE = """
mutation($id: ID!, $input: UpdateClusterInput!) {
  updateCluster(id: $id, input: $input) { userErrors { code message } }
}"""
RELABEL = """
mutation($ids: [ID!]!, $add: [LabelInput!]) {
  setClusterLabels(ids: $ids, add: $add) { userErrors { code message } }
}"""
EVENTS = (
    "subscription { clusterStateChanged { id type clusterId status"
    " cluster { name labels { key value } } } }"
)
BATCHES = (
    "subscription($window: Int!, $after: ID) {"
    " clusterStatesChanged(windowMs: $window, after: $after) { id type clusterId } }"
)


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def secured(settings: Settings, issuer: Issuer) -> Iterator[ThreadedServer]:
    secured_settings = jwt_settings(settings, issuer)
    with ThreadedServer(create_app(secured_settings), secured_settings) as running:
        yield running


@pytest.fixture
async def admin(
    secured: ThreadedServer, issuer: Issuer, database_url: str
) -> AsyncIterator[AuthClient]:
    await truncate(database_url)
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("TRUNCATE api_tokens")
    finally:
        await connection.close()
    async with httpx.AsyncClient(timeout=30) as http:
        yield AuthClient(http, secured.url, issuer.token("root", ["fleet-admins"]))


async def import_cluster(
    admin: AuthClient, kubeconfigs: KubeconfigFactory, name: str, **labels: str
) -> str:
    variables = {
        "input": {
            "name": name,
            "kubeconfig": kubeconfigs.base64(),
            "labels": [{"key": k, "value": v} for k, v in labels.items()],
        }
    }
    payload = (await admin.data(IMPORT, variables))["importCluster"]
    assert payload["userErrors"] == [], payload
    return str(payload["cluster"]["id"])


@asynccontextmanager
async def raw_subscriber(
    server: ThreadedServer, token: str, query: str, variables: dict[str, Any] | None = None
) -> AsyncIterator[ClientConnection]:
    """A graphql-transport-ws connection whose subscription ``1`` is registered; read its raw
    frames with ``next_frame``."""
    async with connect(server.ws_url, subprotocols=[TRANSPORT_WS]) as connection:  # type: ignore[list-item]
        init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
        await connection.send(orjson.dumps(init).decode())
        assert orjson.loads(await connection.recv())["type"] == "connection_ack"
        payload = {"query": query, "variables": variables or {}}
        await connection.send(
            orjson.dumps({"id": "1", "type": "subscribe", "payload": payload}).decode()
        )
        # The server answers a query only after it has read (and registered) the subscription.
        probe = {"id": "2", "type": "subscribe", "payload": {"query": "{ __typename }"}}
        await connection.send(orjson.dumps(probe).decode())
        while True:
            message = orjson.loads(await connection.recv())
            assert message.get("id") != "1", message
            if message == {"id": "2", "type": "complete"}:
                break
        yield connection


async def next_frame(connection: ClientConnection, within: float = 10.0) -> str:
    frame = await asyncio.wait_for(connection.recv(), within)
    assert isinstance(frame, str), "graphql-transport-ws messages are text frames"
    return frame


async def on_server(server: ThreadedServer) -> tuple[Subscription, Callable[[], Any]]:
    async def register() -> Subscription:
        bus = server.app.state.services.events
        return bus.subscribe(lambda *_: True)  # type: ignore[no-any-return]

    subscription: Subscription = await server.call(register())

    async def next_delivery() -> Delivery:
        return await asyncio.wait_for(anext(subscription), 10)

    return subscription, lambda: server.call(next_delivery())


async def subscribers(server: ThreadedServer) -> int:
    async def count() -> int:
        return server.app.state.services.events.subscriber_count  # type: ignore[no-any-return]

    return await server.call(count())  # type: ignore[no-any-return]


async def eventually(count: Callable[[], Awaitable[int]], *, above: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await count() <= above:
        assert loop.time() < deadline, "the subscription was never registered"
        await asyncio.sleep(0.02)


async def test_members_of_one_cohort_receive_byte_identical_frames(
    secured: ThreadedServer, admin: AuthClient, issuer: Issuer, kubeconfigs: KubeconfigFactory
) -> None:
    watcher, next_delivery = await on_server(secured)
    cluster_id = await import_cluster(admin, kubeconfigs, "pay-1", team="payments")
    await next_delivery()  # the import, out of the way before anyone subscribes
    # Two people with the same grant: one cohort, however many of them.
    pat = issuer.token("pat", ["payments-viewers"])
    sam = issuer.token("sam", ["payments-viewers"])
    try:
        async with (
            raw_subscriber(secured, pat, EVENTS) as first,
            raw_subscriber(secured, sam, EVENTS) as second,
            raw_subscriber(secured, sam, EVENTS) as third,
        ):
            await admin.data(UPDATE, {"id": cluster_id, "input": {"description": "changed"}})
            frames = [await next_frame(connection) for connection in (first, second, third)]
            delivery: Delivery = await next_delivery()
    finally:
        await secured.call(watcher.aclose())
    assert frames[0] == frames[1] == frames[2]
    message = orjson.loads(frames[0])
    assert message["id"] == "1" and message["type"] == "next"
    event = message["payload"]["data"]["clusterStateChanged"]
    assert event["clusterId"] == cluster_id and event["type"] == "UPDATED"
    assert event["cluster"] == {"name": "pay-1", "labels": [{"key": "team", "value": "payments"}]}
    # The server encoded the payload once, for the one cohort, and sent those bytes.
    frames_by_cohort = delivery.memo["frames"]
    assert len(frames_by_cohort) == 1
    (slot,) = frames_by_cohort.values()
    assert frames[0] == '{"id":"1","type":"next","payload":' + slot.result() + "}"


async def test_differently_scoped_principals_never_share_a_frame(
    secured: ThreadedServer, admin: AuthClient, issuer: Issuer, kubeconfigs: KubeconfigFactory
) -> None:
    watcher, next_delivery = await on_server(secured)
    cluster_id = await import_cluster(admin, kubeconfigs, "pay-1", team="payments")
    search_id = await import_cluster(admin, kubeconfigs, "search-1", team="search")
    for _ in range(2):
        await next_delivery()
    scoped = issuer.token("pat", ["payments-viewers"])
    everyone = issuer.token("eve", ["fleet-viewers"])
    try:
        async with (
            raw_subscriber(secured, scoped, EVENTS) as payments,
            raw_subscriber(secured, everyone, EVENTS) as fleet,
            raw_subscriber(secured, everyone, EVENTS) as fleet_too,
        ):
            await admin.data(UPDATE, {"id": search_id, "input": {"description": "unseen"}})
            await admin.data(UPDATE, {"id": cluster_id, "input": {"description": "seen"}})
            # The fleet viewers see both; the payments viewer only its own cluster's.
            search_frames = [await next_frame(fleet), await next_frame(fleet_too)]
            seen = [await next_frame(c) for c in (payments, fleet, fleet_too)]
            search_delivery: Delivery = await next_delivery()
            delivery: Delivery = await next_delivery()
    finally:
        await secured.call(watcher.aclose())
    assert search_frames[0] == search_frames[1]
    assert orjson.loads(search_frames[0])["payload"]["data"]["clusterStateChanged"][
        "clusterId"
    ] == (search_id)
    assert len(search_delivery.memo["frames"]) == 1  # the payments viewer never had it
    for frame in seen:
        event = orjson.loads(frame)["payload"]["data"]["clusterStateChanged"]
        assert event["clusterId"] == cluster_id
    # Same bytes (they may see the same fields), but computed once per scope: two cohorts.
    assert len(delivery.memo["frames"]) == 2
    scopes = {key[2] for key in delivery.memo["frames"]}
    assert len(scopes) == 2


async def test_a_burst_arrives_coalesced_in_one_message(
    secured: ThreadedServer, admin: AuthClient, issuer: Issuer, kubeconfigs: KubeconfigFactory
) -> None:
    watcher, next_delivery = await on_server(secured)
    ids = [await import_cluster(admin, kubeconfigs, f"c-{i}", team="payments") for i in range(5)]
    for _ in ids:
        await next_delivery()
    await secured.call(watcher.aclose())
    token = issuer.token("eve", ["fleet-viewers"])
    async with (
        raw_subscriber(secured, token, BATCHES, {"window": 100}) as batched,
        raw_subscriber(secured, token, BATCHES, {"window": 100}) as batched_too,
        raw_subscriber(secured, token, EVENTS) as single,
    ):
        # One transaction: five events committed at once.
        relabel = {"ids": ids, "add": [{"key": "tier", "value": "web"}]}
        assert (await admin.data(RELABEL, relabel))["setClusterLabels"]["userErrors"] == []
        singles = [
            orjson.loads(await next_frame(single))["payload"]["data"]["clusterStateChanged"]
            for _ in ids
        ]
        frame = await next_frame(batched)
        assert await next_frame(batched_too) == frame  # one cohort, one encoded batch
        batch = orjson.loads(frame)["payload"]["data"]["clusterStatesChanged"]
        assert [event["id"] for event in batch] == [event["id"] for event in singles]
        assert {event["clusterId"] for event in batch} == set(ids)
        assert all(event["type"] == "UPDATED" for event in batch)
        # A change after the window is the next message.
        await admin.data(UPDATE, {"id": ids[0], "input": {"description": "later"}})
        later = orjson.loads(await next_frame(batched))["payload"]["data"]
        assert [event["clusterId"] for event in later["clusterStatesChanged"]] == [ids[0]]


async def test_coalesced_subscriptions_replay_and_filter_by_scope(
    secured: ThreadedServer, admin: AuthClient, issuer: Issuer, kubeconfigs: KubeconfigFactory
) -> None:
    pay = await import_cluster(admin, kubeconfigs, "pay-1", team="payments")
    await import_cluster(admin, kubeconfigs, "search-1", team="search")
    await admin.data(UPDATE, {"id": pay, "input": {"description": "x"}})
    token = issuer.token("pat", ["payments-viewers"])
    async with raw_subscriber(secured, token, BATCHES, {"window": 50, "after": "0"}) as replay:
        batch = orjson.loads(await next_frame(replay))["payload"]["data"]["clusterStatesChanged"]
    # Both of pay-1's events, in the log's order; search-1's import is out of scope.
    assert [(event["clusterId"], event["type"]) for event in batch] == [
        (pay, "IMPORTED"),
        (pay, "UPDATED"),
    ]


@pytest.mark.parametrize("window", [0, 5, 1001])
async def test_a_window_out_of_range_is_an_error_naming_it(
    secured: ThreadedServer, admin: AuthClient, issuer: Issuer, window: int
) -> None:
    token = issuer.token("eve", ["fleet-viewers"])
    async with connect(secured.ws_url, subprotocols=[TRANSPORT_WS]) as connection:  # type: ignore[list-item]
        init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
        await connection.send(orjson.dumps(init).decode())
        assert orjson.loads(await connection.recv())["type"] == "connection_ack"
        payload = {"query": BATCHES, "variables": {"window": window}}
        await connection.send(
            orjson.dumps({"id": "1", "type": "subscribe", "payload": payload}).decode()
        )
        message = orjson.loads(await next_frame(connection))
    assert message["type"] in ("error", "next"), message
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    assert errors[0]["message"].startswith("windowMs: must be 10 to 1000 milliseconds"), errors
    assert errors[0]["extensions"] == {"code": "BAD_USER_INPUT", "argument": "windowMs"}


async def test_the_legacy_protocol_gets_coalesced_messages_too(
    secured: ThreadedServer, admin: AuthClient, issuer: Issuer, kubeconfigs: KubeconfigFactory
) -> None:
    watcher, next_delivery = await on_server(secured)
    ids = [await import_cluster(admin, kubeconfigs, f"c-{i}", team="payments") for i in range(3)]
    for _ in ids:
        await next_delivery()
    await secured.call(watcher.aclose())
    init = {"authorization": f"Bearer {issuer.token('pat', ['payments-viewers'])}"}
    async with GraphQLWebSocket.open(secured.ws_url, LEGACY_WS, init_payload=init) as ws:
        before = await subscribers(secured)
        operation = await ws.subscribe(BATCHES, {"window": 100})
        # graphql-ws has no queries to prove the subscription registered: ask the bus.
        await eventually(lambda: subscribers(secured), above=before)
        relabel = {"ids": ids, "add": [{"key": "tier", "value": "db"}]}
        assert (await admin.data(RELABEL, relabel))["setClusterLabels"]["userErrors"] == []
        batch = (await ws.next_data(operation))["clusterStatesChanged"]
    assert sorted(event["clusterId"] for event in batch) == sorted(ids)


def test_only_clean_results_are_shared_as_encoded_payloads() -> None:
    assert encode_payload(ExecutionResult(data={"a": [1, "é"]}, errors=None)) == (
        '{"data":{"a":[1,"é"]}}'
    )
    # Errors are logged, counted and masked for each subscriber: strawberry's path.
    failed = ExecutionResult(data={"a": None}, errors=[GraphQLError("boom")])
    assert encode_payload(failed) is None
    with_extensions = ExecutionResult(data={"a": 1}, errors=None, extensions={"cost": 3})
    assert encode_payload(with_extensions) is None
    # Beyond orjson (integers over 64 bits): json.dumps on strawberry's path takes them.
    assert encode_payload(ExecutionResult(data={"a": 2**70}, errors=None)) is None
