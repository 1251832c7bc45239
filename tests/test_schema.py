"""The published SDL, query limits, masked errors and the HTTP surface around /graphql."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest

from fleetql.schema import build_schema
from tests.conftest import GraphQLClient, ThreadedServer

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema.graphql"


def test_schema_file_matches_the_code() -> None:
    # Regenerate with: .venv/bin/fleetql schema > schema.graphql
    assert SCHEMA_FILE.read_text() == build_schema().as_str() + "\n"


async def test_two_thousand_aliases_are_refused_quickly(api: GraphQLClient) -> None:
    query = "{ " + " ".join(f"a{i}: clusters {{ total }}" for i in range(2000)) + " }"
    started = time.perf_counter()
    body = await api.post(query)
    assert body.get("data") is None
    assert "token" in body["errors"][0]["message"].lower()
    # Refused at parse time; generous bound, this is a sanity check, not a benchmark.
    assert time.perf_counter() - started < 5


async def test_too_many_aliases_within_the_token_limit_are_refused(api: GraphQLClient) -> None:
    query = "{ " + " ".join(f"a{i}: clusters {{ total }}" for i in range(40)) + " }"
    body = await api.post(query)
    assert "aliases" in body["errors"][0]["message"]


async def test_aliases_hidden_in_fragments_are_counted_per_use(api: GraphQLClient) -> None:
    fragment = (
        "fragment F on Query { " + " ".join(f"a{i}: clusters {{ total }}" for i in range(5)) + " }"
    )
    query = "{ " + " ".join("...F" for _ in range(10)) + " } " + fragment
    body = await api.post(query)
    assert "50 aliases" in body["errors"][0]["message"]


async def test_graphiql_introspection_is_allowed(api: GraphQLClient) -> None:
    from graphql import get_introspection_query

    body = await api.post(get_introspection_query(descriptions=True))
    assert "errors" not in body
    names = {t["name"] for t in body["data"]["__schema"]["types"]}
    assert {"Cluster", "ClusterStatus", "Long"} <= names


async def test_graphiql_page_is_served_on_get(server: ThreadedServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(server.url, headers={"accept": "text/html"})
    assert response.status_code == 200 and "graphiql" in response.text.lower()


async def test_unexpected_errors_are_masked_and_logged_with_request_id(
    api: GraphQLClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fleetql.resolvers import clusters

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("internal detail that must not reach clients")

    monkeypatch.setattr(clusters, "get_cluster", broken)
    caplog.set_level(logging.ERROR, logger="fleetql.graphql")
    response = await api.http.post(
        api.url,
        json={"query": '{ cluster(id: "00000000-0000-4000-8000-000000000000") { id } }'},
        headers={"x-request-id": "req-1234"},
    )
    assert response.headers["x-request-id"] == "req-1234"
    assert "internal detail" not in response.text
    assert response.json()["errors"][0]["message"].startswith("Internal error")
    logged = [record for record in caplog.records if "req-1234" in record.getMessage()]
    assert logged and logged[0].exc_info is not None


async def test_request_id_is_generated_when_missing_or_unsafe(api: GraphQLClient) -> None:
    plain = await api.http.post(api.url, json={"query": "{ clusters { total } }"})
    assert len(plain.headers["x-request-id"]) == 32
    forged = await api.http.post(
        api.url, json={"query": "{ clusters { total } }"}, headers={"x-request-id": "a\tb" * 3}
    )
    assert forged.headers["x-request-id"] != "a\tb" * 3


async def test_argument_errors_carry_a_code_and_the_argument(api: GraphQLClient) -> None:
    body = await api.post("{ clusters(limit: 501) { total } }")
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "argument": "limit"}


async def test_cors_allows_no_origin_by_default(server: ThreadedServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.options(
            server.url,
            headers={
                "origin": "https://console.example.com",
                "access-control-request-method": "POST",
            },
        )
    assert "access-control-allow-origin" not in response.headers
