"""The HTTP surface of /graphql: body limit, JSON-only POSTs (CSRF), GET for queries only,
batching, and the production switches (no GraphiQL, no introspection, no suggestions)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from fleetql.app import create_app
from fleetql.config import ConfigError, Settings, load_settings
from tests.authkit import Issuer, jwt_settings
from tests.conftest import GraphQLClient, ThreadedServer
from tests.kubeconfigs import KubeconfigFactory
from tests.wsclient import GraphQLWebSocket

IMPORT = """
mutation($input: ImportClusterInput!) {
  importCluster(input: $input) { cluster { id } userErrors { field code message } }
}
"""
TOTAL = "{ clusters(limit: 0) { total } }"
LOCKED_BODY_LIMIT = 70_000
CONSOLE = "https://console.example.com"


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def locked_server(
    settings: Settings, server: ThreadedServer, issuer: Issuer
) -> Iterator[ThreadedServer]:
    """A production-shaped server: bearer tokens, one console origin, no GraphiQL, no
    introspection, batches of at most 3, and a small body limit (``server`` has migrated the
    database)."""
    raw = jwt_settings(settings, issuer).model_dump()
    raw["graphql"] = {
        "graphiql": False,
        "introspection": False,
        "batching": True,
        "max_batch_operations": 3,
    }
    raw["server"]["max_body_bytes"] = LOCKED_BODY_LIMIT
    raw["server"]["cors_origins"] = [CONSOLE]
    raw["cluster_manager"]["max_kubeconfig_bytes"] = 1024
    locked = Settings.model_validate(raw)
    with ThreadedServer(create_app(locked, migrate=False), locked) as running:
        yield running


@pytest.fixture
async def locked(
    locked_server: ThreadedServer, api: GraphQLClient, issuer: Issuer
) -> AsyncIterator[GraphQLClient]:
    """An admin's client of the locked server (``api`` emptied the fleet)."""
    token = issuer.token("admin@example.com", ["fleet-admins"])
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        yield GraphQLClient(http, locked_server.url)


def import_body(kubeconfigs: KubeconfigFactory, name: str = "csrf") -> dict[str, Any]:
    return {
        "query": IMPORT,
        "variables": {"input": {"name": name, "kubeconfig": kubeconfigs.base64()}},
    }


async def total_clusters(api: GraphQLClient) -> int:
    data = await api.data(TOTAL)
    return int(data["clusters"]["total"])


# --- Body limit ---------------------------------------------------------------------------


async def test_a_declared_oversized_body_is_refused_before_it_is_sent(
    server: ThreadedServer,
) -> None:
    """Only headers go out, announcing 10 MB: the 413 must come without the server waiting for
    (or reading) a single byte of the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /graphql HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"x-request-id: big-body-1\r\ncontent-length: 10000000\r\n\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"x-request-id: big-body-1" in head.lower()


async def test_a_two_mebibyte_import_gets_413_and_imports_nothing(api: GraphQLClient) -> None:
    huge = base64.b64encode(b"# " + b"x" * (2 * 1024 * 1024) + b"\n").decode()
    response = await api.http.post(
        api.url,
        json={"query": IMPORT, "variables": {"input": {"name": "huge", "kubeconfig": huge}}},
        headers={"x-request-id": "huge-import"},
    )
    assert response.status_code == 413
    assert response.headers["x-request-id"] == "huge-import"
    assert response.json()["errors"][0]["message"] == (
        "the request body is larger than 1048576 bytes (server.max_body_bytes)"
    )
    assert await total_clusters(api) == 0


async def test_a_chunked_body_is_counted_as_it_arrives(
    locked: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    payload = orjson.dumps(import_body(kubeconfigs)) + b" " * LOCKED_BODY_LIMIT

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]

    response = await locked.http.post(
        locked.url, content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers  # it really went chunked
    assert response.status_code == 413
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert "server.max_body_bytes" in error["message"]
    assert await total_clusters(locked) == 0


async def test_a_body_just_under_the_limit_is_served(locked: GraphQLClient) -> None:
    padding = " " * (LOCKED_BODY_LIMIT - 200)
    content = orjson.dumps({"query": TOTAL + padding})
    assert len(content) <= LOCKED_BODY_LIMIT
    response = await locked.http.post(
        locked.url, content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200 and response.json()["data"]["clusters"]["total"] == 0


async def test_the_largest_kubeconfig_fits_the_default_body_limit(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, settings: Settings
) -> None:
    """server.max_body_bytes must hold an import of a kubeconfig of max_kubeconfig_bytes."""
    text = kubeconfigs.yaml()
    limit = settings.cluster_manager.max_kubeconfig_bytes
    text += "#" + "k" * (limit - len(text.encode()) - 2) + "\n"
    assert len(text.encode()) == limit
    body = {
        "query": IMPORT,
        "variables": {
            "input": {
                "name": "largest",
                "kubeconfig": base64.b64encode(text.encode()).decode(),
                "description": '"' * 2048,  # escaped in JSON: two bytes each
            }
        },
    }
    response = await api.http.post(api.url, json=body)
    assert response.status_code == 200, response.text
    payload = response.json()["data"]["importCluster"]
    assert payload["userErrors"] == [] and payload["cluster"]["id"]


# --- JSON-only POSTs (CSRF) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data", "text/plain"]
)
async def test_simple_request_content_types_are_refused_and_import_nothing(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory, content_type: str
) -> None:
    """The three content types a page on another site can POST without a CORS preflight."""
    body = import_body(kubeconfigs)
    if content_type == "application/x-www-form-urlencoded":
        request = api.http.build_request(
            "POST", api.url, data={"query": IMPORT, "variables": orjson.dumps(body["variables"])}
        )
    elif content_type == "multipart/form-data":
        operations = orjson.dumps(body)
        request = api.http.build_request(
            "POST", api.url, files={"operations": (None, operations), "map": (None, b"{}")}
        )
    else:
        request = api.http.build_request(
            "POST", api.url, content=orjson.dumps(body), headers={"content-type": "text/plain"}
        )
    assert request.headers["content-type"].startswith(content_type)
    response = await api.http.send(request)
    assert response.status_code == 415
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert "application/json" in error["message"]
    assert await total_clusters(api) == 0
    # The same import as JSON works: the refusal was the content type, not the payload.
    accepted = await api.post(body["query"], body["variables"])
    assert accepted["data"]["importCluster"]["userErrors"] == []
    assert await total_clusters(api) == 1


async def test_json_with_a_charset_is_accepted(api: GraphQLClient) -> None:
    response = await api.http.post(
        api.url,
        content=orjson.dumps({"query": TOTAL}),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200 and response.json()["data"]["clusters"]["total"] == 0


async def test_a_console_origin_can_preflight_and_read_refusals(
    locked: GraphQLClient, locked_server: ThreadedServer
) -> None:
    """CORS sits outside the other checks: a preflight (which never carries a token) is
    answered, and a listed console can read why a request was refused (413, 415, 401) instead
    of seeing a CORS failure."""
    console = {"origin": CONSOLE}
    async with httpx.AsyncClient(timeout=30) as anonymous:
        preflight = await anonymous.options(
            locked_server.url,
            headers=console
            | {
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, authorization",
            },
        )
        unauthenticated = await anonymous.post(
            locked_server.url, json={"query": TOTAL}, headers=console
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == CONSOLE
    too_large = await locked.http.post(
        locked.url,
        content=b"[" + b" " * LOCKED_BODY_LIMIT + b"]",
        headers=console | {"content-type": "application/json"},
    )
    as_text = await locked.http.post(
        locked.url, content=b"{}", headers=console | {"content-type": "text/plain"}
    )
    for response, status in ((too_large, 413), (as_text, 415), (unauthenticated, 401)):
        assert response.status_code == status
        assert response.headers["access-control-allow-origin"] == CONSOLE


# --- GET ----------------------------------------------------------------------------------


async def test_get_runs_queries(api: GraphQLClient) -> None:
    response = await api.http.get(api.url, params={"query": TOTAL})
    assert response.status_code == 200 and response.json()["data"]["clusters"]["total"] == 0


async def test_get_refuses_mutations_and_imports_nothing(
    api: GraphQLClient, kubeconfigs: KubeconfigFactory
) -> None:
    body = import_body(kubeconfigs)
    response = await api.http.get(
        api.url, params={"query": IMPORT, "variables": orjson.dumps(body["variables"]).decode()}
    )
    assert response.status_code == 400
    assert "mutations are not allowed when using GET" in response.text
    assert await total_clusters(api) == 0


# --- Batching -----------------------------------------------------------------------------


async def test_batches_are_refused_by_default(api: GraphQLClient) -> None:
    response = await api.http.post(api.url, json=[{"query": TOTAL}, {"query": TOTAL}])
    assert response.status_code == 400 and "Batching is not enabled" in response.text


async def test_enabled_batches_run_up_to_the_configured_size(locked: GraphQLClient) -> None:
    three = await locked.http.post(locked.url, json=[{"query": TOTAL}] * 3)
    assert three.status_code == 200
    assert [result["data"]["clusters"]["total"] for result in three.json()] == [0, 0, 0]
    four = await locked.http.post(locked.url, json=[{"query": TOTAL}] * 4)
    assert four.status_code == 400 and "Too many operations" in four.text


# --- Production switches ------------------------------------------------------------------


async def test_graphiql_can_be_switched_off(locked: GraphQLClient) -> None:
    page = await locked.http.get(locked.url, headers={"accept": "text/html"})
    assert page.status_code == 404 and "graphiql" not in page.text.lower()


async def test_introspection_can_be_switched_off(locked: GraphQLClient) -> None:
    for query in ("{ __schema { queryType { name } } }", '{ __type(name: "Cluster") { name } }'):
        body = await locked.post(query)
        assert body.get("data") is None
        assert "introspection has been disabled" in body["errors"][0]["message"]
    # __typename is not introspection of the schema, and clients rely on it.
    assert (await locked.data("{ __typename }")) == {"__typename": "Query"}


async def test_suggestions_are_left_out_when_introspection_is_off(
    api: GraphQLClient, locked: GraphQLClient
) -> None:
    misspelt = "{ clusterz { total } }"
    bad_enum = "query($s: [ClusterStatus!]) { clusters(filter: {status: $s}) { total } }"
    shown = await api.post(misspelt)
    assert "Did you mean 'cluster' or 'clusters'?" in shown["errors"][0]["message"]
    for query, variables in ((misspelt, None), (bad_enum, {"s": ["HEALTHI"]})):
        body = await locked.post(query, variables)
        message = body["errors"][0]["message"]
        assert "Did you mean" not in message and "HEALTHY" not in message
        assert message.startswith(("Cannot query field 'clusterz'", "Variable '$s'"))


async def test_suggestions_are_left_out_of_websocket_errors_too(
    locked_server: ThreadedServer, locked: GraphQLClient
) -> None:
    authorization = locked.http.headers["authorization"]
    async with GraphQLWebSocket.open(
        locked_server.ws_url, init_payload={"authorization": authorization}
    ) as socket:
        operation = await socket.subscribe("subscription { clusterStateChangd { id } }")
        message = await socket.next_message(operation)
    assert message["type"] == "error"
    text = orjson.dumps(message["payload"]).decode()
    assert "Cannot query field 'clusterStateChangd'" in text
    assert "Did you mean" not in text and "clusterStateChanged" not in text


# --- Settings -----------------------------------------------------------------------------


def test_old_server_keys_are_read_as_graphql_keys() -> None:
    settings = load_settings(
        environ={"FLEETQL_SERVER__MAX_QUERY_DEPTH": "5"},
        overrides={"server": {"graphiql": False, "max_query_tokens": 800, "max_aliases": 4}},
    )
    graphql = settings.graphql
    assert (graphql.graphiql, graphql.max_tokens, graphql.max_aliases, graphql.max_depth) == (
        False,
        800,
        4,
        5,
    )


def test_an_old_and_a_new_key_that_disagree_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"server\.max_aliases .* graphql\.max_aliases"):
        load_settings(
            environ={},
            overrides={"server": {"max_aliases": 4}, "graphql": {"max_aliases": 9}},
        )


def test_graphiql_without_introspection_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"graphql: graphiql: .*introspection"):
        load_settings(environ={}, overrides={"graphql": {"introspection": False}})


def test_a_body_limit_too_small_for_the_largest_kubeconfig_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"server\.max_body_bytes .*max_kubeconfig_bytes"):
        load_settings(
            environ={},
            overrides={
                "server": {"max_body_bytes": 1024 * 1024},
                "cluster_manager": {"max_kubeconfig_bytes": 1024 * 1024},
            },
        )
