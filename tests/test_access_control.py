"""Roles and label scopes, enforced everywhere a cluster can be seen or changed, over real HTTP
and websockets against a server that requires bearer tokens."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fleetql.app import create_app
from fleetql.config import Settings
from fleetql.schema import build_schema
from tests.authkit import AuthClient, Issuer, forbidden, jwt_settings
from tests.conftest import ThreadedServer, asyncpg_dsn, truncate
from tests.kubeconfigs import KubeconfigFactory
from tests.wsclient import LEGACY_WS, TRANSPORT_WS, GraphQLWebSocket

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id name } userErrors { field code message } }
}"""
UPDATE = """
mutation($id: ID!, $input: UpdateClusterInput!) {
  updateCluster(id: $id, input: $input) {
    cluster { id labels { key value } } userErrors { field code message }
  }
}"""
EVENTS = "subscription { clusterStateChanged { type clusterId cluster { name } } }"


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def secured(settings: Settings, issuer: Issuer) -> Iterator[ThreadedServer]:
    secured_settings = jwt_settings(settings, issuer)
    with ThreadedServer(create_app(secured_settings), secured_settings) as running:
        yield running


@pytest.fixture
async def http(secured: ThreadedServer, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    await truncate(database_url)
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute("TRUNCATE api_tokens")
    finally:
        await connection.close()
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
def as_(
    http: httpx.AsyncClient, secured: ThreadedServer, issuer: Issuer
) -> Callable[..., AuthClient]:
    def client(subject: str, *groups: str) -> AuthClient:
        return AuthClient(http, secured.url, issuer.token(subject, list(groups)))

    return client


async def import_as(
    client: AuthClient, kubeconfigs: KubeconfigFactory, name: str, **labels: str
) -> dict[str, Any]:
    return await client.data(
        IMPORT,
        {
            "input": {
                "name": name,
                "kubeconfig": kubeconfigs.base64(),
                "labels": [{"key": k, "value": v} for k, v in labels.items()],
            }
        },
    )


async def fleet(as_: Callable[..., AuthClient], kubeconfigs: KubeconfigFactory) -> dict[str, str]:
    """pay-1 and pay-2 of team payments, search-1 of team search; name -> id."""
    admin = as_("root", "fleet-admins")
    ids = {}
    for name, team in (("pay-1", "payments"), ("pay-2", "payments"), ("search-1", "search")):
        result = await import_as(admin, kubeconfigs, name, team=team)
        ids[name] = result["importCluster"]["cluster"]["id"]
    return ids


async def test_http_requests_need_a_valid_token(
    http: httpx.AsyncClient, secured: ThreadedServer, issuer: Issuer
) -> None:
    query = {"query": "{ clusters { total } }"}
    missing = await http.post(secured.url, json=query)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    forged = await http.post(
        secured.url, json=query, headers={"authorization": f"Bearer {Issuer().token('x', [])}"}
    )
    assert forged.status_code == 401 and "signature" in forged.json()["errors"][0]["message"]
    no_role = await http.post(
        secured.url,
        json=query,
        headers={"authorization": f"Bearer {issuer.token('intern', ['interns'])}"},
    )
    assert no_role.status_code == 403
    # The GraphiQL page loads without a token; what it sends is authenticated.
    page = await http.get(secured.url, headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    by_get = await http.get(secured.url, params={"query": "{ clusters { total } }"})
    assert by_get.status_code == 401


# Every root field of the schema, the least role that may use it, and an operation that uses it.
# A new field fails test_every_root_field_has_a_case until someone decides who may use it.
CASES: dict[str, tuple[str, str]] = {
    "Query.clusters": ("viewer", "{ clusters { total } }"),
    "Query.cluster": ("viewer", "query($id: ID!) { cluster(id: $id) { id } }"),
    "Query.events": ("viewer", "{ events { items { id } } }"),
    "Query.fleetSummary": ("viewer", "{ fleetSummary { clusters } }"),
    "Query.apiTokens": ("admin", "{ apiTokens { id } }"),
    "Mutation.importCluster": ("operator", IMPORT),
    "Mutation.updateCluster": ("operator", UPDATE),
    "Mutation.setClusterLabels": (
        "operator",
        'mutation($id: ID!) { setClusterLabels(ids: [$id], add: [{key: "x", value: "y"}]) '
        "{ userErrors { code } } }",
    ),
    "Mutation.resyncCluster": (
        "operator",
        "mutation($id: ID!) { resyncCluster(id: $id, wait: false) { userErrors { code } } }",
    ),
    "Mutation.resyncClusters": ("operator", "mutation { resyncClusters { queued } }"),
    "Mutation.removeCluster": (
        "admin",
        "mutation($id: ID!) { removeCluster(id: $id) { userErrors { code } } }",
    ),
    "Mutation.createApiToken": (
        "admin",
        'mutation { createApiToken(name: "ci", role: VIEWER) { secret userErrors { code } } }',
    ),
    "Mutation.revokeApiToken": (
        "admin",
        "mutation($id: ID!) { revokeApiToken(id: $id) { userErrors { code } } }",
    ),
    "Subscription.clusterStateChanged": ("viewer", EVENTS),
    "Subscription.clusterEvents": ("viewer", "subscription { clusterEvents { type } }"),
    "Subscription.clusterStatesChanged": (
        "viewer",
        "subscription { clusterStatesChanged { clusterId } }",
    ),
}
ROLES = {"viewer": "fleet-viewers", "operator": "fleet-operators", "admin": "fleet-admins"}
RANK = {"viewer": 1, "operator": 2, "admin": 3}


def test_every_root_field_has_a_case() -> None:
    schema = build_schema()._schema
    fields = {
        f"{root.name}.{name}"
        for root in (schema.query_type, schema.mutation_type, schema.subscription_type)
        if root is not None
        for name in root.fields
    }
    assert fields == set(CASES)


async def test_each_role_may_do_exactly_what_its_rank_allows(
    as_: Callable[..., AuthClient], kubeconfigs: KubeconfigFactory, secured: ThreadedServer
) -> None:
    admin = as_("root", "fleet-admins")
    for role, group in ROLES.items():
        client = as_(f"a-{role}", group)
        victim = (await import_as(admin, kubeconfigs, f"victim-{role}"))["importCluster"]
        token = await admin.data(CASES["Mutation.createApiToken"][1])
        assert token["createApiToken"]["secret"]
        tokens = await admin.data("{ apiTokens { id } }")
        variables = {
            "id": victim["cluster"]["id"],
            "input": {"description": f"changed by {role}"},
        }
        for field, (least, document) in CASES.items():
            allowed = RANK[role] >= RANK[least]
            if field.startswith("Subscription."):
                await check_subscription(secured, client.token, document, allowed)
                continue
            if field == "Mutation.importCluster":
                variables_for = {
                    "input": {"name": f"new-{role}", "kubeconfig": kubeconfigs.base64()}
                }
            elif field == "Mutation.revokeApiToken":
                variables_for = {"id": tokens["apiTokens"][0]["id"]}
            else:
                variables_for = variables
            used = {k: v for k, v in variables_for.items() if f"${k}" in document}
            body = await client.post(document, used)
            assert forbidden(body) is not allowed, (role, field, body)
            if allowed:
                assert "errors" not in body, (role, field, body)


async def check_subscription(
    server: ThreadedServer, token: str | None, document: str, allowed: bool
) -> None:
    init = {"authorization": f"Bearer {token}"}
    async with GraphQLWebSocket.open(server.ws_url, init_payload=init) as ws:
        operation = await ws.subscribe(document)
        if not allowed:
            message = await ws.next_message(operation)
            assert message["type"] == "error", message
        else:
            # Allowed: the subscription is live and stays open until the client ends it.
            data = await ws.query("{ clusters { total } }")
            assert data["clusters"]["total"] >= 0
            assert ws.pending(operation) == 0 or (await ws.next_message(operation))["type"] in (
                "next",
            )


async def test_a_scoped_principal_sees_only_its_clusters_everywhere(
    as_: Callable[..., AuthClient], kubeconfigs: KubeconfigFactory
) -> None:
    ids = await fleet(as_, kubeconfigs)
    viewer = as_("pat", "payments-viewers")
    page = await viewer.data("{ clusters(limit: 1) { total items { name } } }")
    assert page["clusters"]["total"] == 2
    listed = await viewer.data("{ clusters { items { name } } }")
    assert sorted(item["name"] for item in listed["clusters"]["items"]) == ["pay-1", "pay-2"]
    one = "query($id: ID!) { cluster(id: $id) { name } }"
    assert (await viewer.data(one, {"id": ids["search-1"]}))["cluster"] is None
    assert (await viewer.data(one, {"id": ids["pay-1"]}))["cluster"]["name"] == "pay-1"
    summary = await viewer.data("{ fleetSummary { clusters byStatus { status clusters } } }")
    assert summary["fleetSummary"]["clusters"] == 2
    events = await viewer.data("{ events(first: 50) { items { clusterId type } } }")
    assert {e["clusterId"] for e in events["events"]["items"]} == {ids["pay-1"], ids["pay-2"]}
    theirs = await viewer.data(
        "query($ids: [ID!]) { events(filter: {clusterIds: $ids}) { items { id } } }",
        {"ids": [ids["search-1"]]},
    )
    assert theirs["events"]["items"] == []
    # The unscoped view, for contrast.
    everyone = await as_("vic", "fleet-viewers").data("{ clusters { total } }")
    assert everyone["clusters"]["total"] == 3


async def test_a_scoped_operator_cannot_touch_or_give_away_clusters(
    as_: Callable[..., AuthClient], kubeconfigs: KubeconfigFactory
) -> None:
    ids = await fleet(as_, kubeconfigs)
    operator = as_("olga", "payments-operators")
    # Outside the scope: exactly what an unknown id gets.
    outside = await operator.data(UPDATE, {"id": ids["search-1"], "input": {"description": "x"}})
    assert outside["updateCluster"]["userErrors"][0]["code"] == "NOT_FOUND"
    resync = await operator.data(
        "mutation($id: ID!) { resyncCluster(id: $id, wait: false) { userErrors { code } } }",
        {"id": ids["search-1"]},
    )
    assert resync["resyncCluster"]["userErrors"][0]["code"] == "NOT_FOUND"
    # Relabelling a cluster out of the scope is refused, and changes nothing.
    away = await operator.data(
        UPDATE, {"id": ids["pay-1"], "input": {"addLabels": [{"key": "team", "value": "search"}]}}
    )
    assert away["updateCluster"]["userErrors"][0]["code"] == "FORBIDDEN"
    # Bulk relabelling with one cluster outside: all or nothing, and the outsider not revealed.
    bulk = await operator.data(
        'mutation($ids: [ID!]!) { setClusterLabels(ids: $ids, add: [{key: "tier", value: '
        '"1"}]) { clusters { id } userErrors { field code } } }',
        {"ids": [ids["pay-1"], ids["search-1"]]},
    )
    assert bulk["setClusterLabels"]["userErrors"] == [{"field": "ids[1]", "code": "NOT_FOUND"}]
    admin = as_("root", "fleet-admins")
    labels = await admin.data(
        "query($id: ID!) { cluster(id: $id) { labels { key value } } }", {"id": ids["pay-1"]}
    )
    assert labels["cluster"]["labels"] == [{"key": "team", "value": "payments"}]
    # Importing a cluster into someone else's scope is refused; into its own, allowed.
    foreign = await import_as(operator, kubeconfigs, "sneaky", team="search")
    assert foreign["importCluster"]["userErrors"][0]["code"] == "FORBIDDEN"
    own = await import_as(operator, kubeconfigs, "pay-3", team="payments")
    assert own["importCluster"]["userErrors"] == []
    queued = await operator.data("mutation { resyncClusters { queued } }")
    assert queued["resyncClusters"]["queued"] == 3
    # The change is recorded with who made it.
    changed = await operator.data(UPDATE, {"id": ids["pay-2"], "input": {"description": "x"}})
    assert changed["updateCluster"]["userErrors"] == []
    log = await admin.data(
        "query($ids: [ID!]) { events(filter: {clusterIds: $ids, types: [UPDATED]}) "
        "{ items { actor } } }",
        {"ids": [ids["pay-2"]]},
    )
    assert log["events"]["items"] == [{"actor": "olga"}]


async def test_seeing_a_cluster_is_not_enough_to_change_it(
    as_: Callable[..., AuthClient], kubeconfigs: KubeconfigFactory
) -> None:
    ids = await fleet(as_, kubeconfigs)
    both = as_("dana", "fleet-viewers", "payments-operators")
    refused = await both.data(UPDATE, {"id": ids["search-1"], "input": {"description": "x"}})
    assert refused["updateCluster"]["userErrors"][0]["code"] == "FORBIDDEN"
    allowed = await both.data(UPDATE, {"id": ids["pay-1"], "input": {"description": "x"}})
    assert allowed["updateCluster"]["userErrors"] == []
    removal = await as_("pa", "payments-admins").data(
        "mutation($id: ID!) { removeCluster(id: $id) { userErrors { code } } }",
        {"id": ids["search-1"]},
    )
    assert removal["removeCluster"]["userErrors"][0]["code"] == "NOT_FOUND"


async def test_subscriptions_deliver_only_events_in_scope(
    as_: Callable[..., AuthClient],
    kubeconfigs: KubeconfigFactory,
    secured: ThreadedServer,
    issuer: Issuer,
) -> None:
    ids = await fleet(as_, kubeconfigs)
    admin = as_("root", "fleet-admins")
    init = {"authorization": f"Bearer {issuer.token('pat', ['payments-viewers'])}"}
    async with GraphQLWebSocket.open(secured.ws_url, init_payload=init) as ws:
        operation = await ws.subscribe(EVENTS)
        await ws.query("{ clusters { total } }")  # the subscription is registered by now
        await admin.data(UPDATE, {"id": ids["search-1"], "input": {"description": "a"}})
        await admin.data(UPDATE, {"id": ids["pay-1"], "input": {"description": "b"}})
        await admin.data(
            "mutation($id: ID!) { removeCluster(id: $id) { userErrors { code } } }",
            {"id": ids["pay-2"]},
        )
        first = await ws.next_data(operation)
        assert first["clusterStateChanged"]["clusterId"] == ids["pay-1"]
        second = await ws.next_data(operation)
        assert second["clusterStateChanged"]["type"] == "REMOVED"
        assert second["clusterStateChanged"]["clusterId"] == ids["pay-2"]
        # And a replay from the start of the log is scoped the same way.
        replay = await ws.subscribe(
            "subscription($after: ID) { clusterEvents(after: $after) { clusterId } }",
            {"after": "0"},
        )
        seen = set()
        for _ in range(4):  # pay-1, pay-2 imported; pay-1 updated; pay-2 removed
            seen.add((await ws.next_data(replay))["clusterEvents"]["clusterId"])
        assert seen == {ids["pay-1"], ids["pay-2"]}
        assert ws.pending(replay) == 0


async def raw_socket(
    server: ThreadedServer, protocol: str, payload: dict[str, Any], **options: Any
) -> tuple[list[dict[str, Any]], int | None]:
    """Send connection_init and return what the server sent and its close code."""
    received: list[dict[str, Any]] = []
    async with connect(server.ws_url, subprotocols=[protocol], **options) as connection:  # type: ignore[list-item]
        await connection.send(
            orjson.dumps({"type": "connection_init", "payload": payload}).decode()
        )
        try:
            async with asyncio.timeout(10):
                async for message in connection:
                    received.append(orjson.loads(message))
        except ConnectionClosed:
            pass
        return received, connection.close_code


async def test_websockets_are_refused_without_a_valid_token(
    secured: ThreadedServer, issuer: Issuer
) -> None:
    for payload in ({}, {"authorization": "Bearer nonsense"}):
        received, code = await raw_socket(secured, TRANSPORT_WS, payload)
        assert code == 4403 and received == []
        received, code = await raw_socket(secured, LEGACY_WS, payload)
        assert received and received[0]["type"] == "connection_error"
        assert all(message["type"] != "connection_ack" for message in received)
    # A token in the upgrade request's header is accepted too.
    header = {"Authorization": f"Bearer {issuer.token('ana', ['fleet-viewers'])}"}
    async with GraphQLWebSocket.open(secured.ws_url, additional_headers=header) as ws:
        assert "clusters" in await ws.query("{ clusters { total } }")


async def test_a_socket_is_closed_when_its_token_expires(
    secured: ThreadedServer, issuer: Issuer
) -> None:
    import time

    token = issuer.token("brief", ["fleet-viewers"], exp=int(time.time()) + 2)
    init = {"authorization": f"Bearer {token}"}
    async with GraphQLWebSocket.open(secured.ws_url, init_payload=init) as ws:
        await ws.subscribe(EVENTS)
        await asyncio.wait_for(ws.closed.wait(), 15)
        assert ws.connection.close_code == 4401


async def test_api_tokens_are_shown_once_used_and_revoked_at_once(
    as_: Callable[..., AuthClient],
    kubeconfigs: KubeconfigFactory,
    secured: ThreadedServer,
    http: httpx.AsyncClient,
) -> None:
    await fleet(as_, kubeconfigs)
    admin = as_("root", "fleet-admins")
    created = await admin.data(
        'mutation { createApiToken(name: "dashboards", role: VIEWER, scope: "team=payments") '
        "{ secret token { id name role scope createdBy lastUsedAt } userErrors { code } } }"
    )
    secret = created["createApiToken"]["secret"]
    token = created["createApiToken"]["token"]
    assert secret.startswith("fqt_")
    assert token["role"] == "VIEWER" and token["createdBy"] == "root"
    robot = AuthClient(http, secured.url, secret)
    assert (await robot.data("{ clusters { total } }"))["clusters"]["total"] == 2
    assert forbidden(await robot.post(UPDATE, {"id": token["id"], "input": {}}))
    listed = await admin.post("{ apiTokens { id name lastUsedAt } }")
    assert secret not in orjson.dumps(listed).decode()
    assert listed["data"]["apiTokens"][0]["lastUsedAt"] is not None

    async with GraphQLWebSocket.open(
        secured.ws_url, init_payload={"authorization": f"Bearer {secret}"}
    ) as ws:
        await ws.subscribe(EVENTS)
        revoked = await admin.data(
            "mutation($id: ID!) { revokeApiToken(id: $id) { token { revokedAt } } }",
            {"id": token["id"]},
        )
        assert revoked["revokeApiToken"]["token"]["revokedAt"] is not None
        response = await http.post(
            secured.url,
            json={"query": "{ clusters { total } }"},
            headers={"authorization": f"Bearer {secret}"},
        )
        assert response.status_code == 401 and "revoked" in response.text
        await asyncio.wait_for(ws.closed.wait(), 15)
        assert ws.connection.close_code == 4403


async def test_a_token_never_grants_more_than_its_creator_holds(
    as_: Callable[..., AuthClient],
) -> None:
    scoped_admin = as_("pa", "payments-admins")
    wider = await scoped_admin.data(
        'mutation { createApiToken(name: "all", role: VIEWER) { secret userErrors { code } } }'
    )
    assert wider["createApiToken"]["secret"] is None
    assert wider["createApiToken"]["userErrors"] == [{"code": "FORBIDDEN"}]
    own = await scoped_admin.data(
        'mutation { createApiToken(name: "pay", role: OPERATOR, scope: "team = payments") '
        "{ secret userErrors { code } } }"
    )
    assert own["createApiToken"]["secret"]
    root = as_("root", "fleet-admins")
    await root.data('mutation { createApiToken(name: "root\'s", role: ADMIN) { secret } }')
    # A scoped admin lists (and may revoke) only the tokens it created.
    mine = await scoped_admin.data("{ apiTokens { name } }")
    assert mine["apiTokens"] == [{"name": "pay"}]
    assert len((await root.data("{ apiTokens { name } }"))["apiTokens"]) == 2


async def test_no_subscription_starts_before_the_connection_is_acknowledged(
    secured: ThreadedServer,
) -> None:
    start = {"id": "1", "payload": {"query": "{ clusters { total } }"}}
    for protocol, kind in ((TRANSPORT_WS, "subscribe"), (LEGACY_WS, "start")):
        received: list[dict[str, Any]] = []
        async with connect(secured.ws_url, subprotocols=[protocol]) as connection:  # type: ignore[list-item]
            await connection.send(orjson.dumps({**start, "type": kind}).decode())
            try:
                async with asyncio.timeout(5):
                    async for message in connection:
                        received.append(orjson.loads(message))
            except (ConnectionClosed, TimeoutError):
                pass
        assert not any(message.get("type") in ("next", "data") for message in received), received


async def test_the_import_command_sends_its_token(
    secured: ThreadedServer,
    as_: Callable[..., AuthClient],
    issuer: Issuer,
    tmp_kubeconfig: Any,
) -> None:
    from tests.test_cli import run

    token = issuer.token("ci", ["fleet-operators"])
    refused = run("import", str(tmp_kubeconfig), "--name", "from-ci", "--url", secured.url)
    assert refused.returncode == 1 and "authentication required" in refused.stderr
    env = {**os.environ, "FLEETQL_TOKEN": token}
    result = run("import", str(tmp_kubeconfig), "--name", "from-ci", "--url", secured.url, env=env)
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout + result.stderr
    log = await as_("root", "fleet-admins").data(
        "{ events(filter: {types: [IMPORTED]}) { items { actor message } } }"
    )
    assert [item["actor"] for item in log["events"]["items"]] == ["ci"]


async def test_a_socket_holds_at_most_the_configured_number_of_subscriptions(
    secured: ThreadedServer, issuer: Issuer
) -> None:
    init = {"authorization": f"Bearer {issuer.token('ana', ['fleet-viewers'])}"}
    async with GraphQLWebSocket.open(secured.ws_url, init_payload=init) as ws:
        operations = [await ws.subscribe(EVENTS) for _ in range(100)]  # the default cap
        extra = await ws.subscribe(EVENTS)
        refused = await ws.next_message(extra)
        assert refused["type"] == "error"
        assert "limit" in str(refused["payload"]).lower()
        assert all(ws.pending(operation) == 0 for operation in operations)
