"""Depth, alias, directive and token limits at graphql-armor's strictness, over a real server,
without defeating the validation cache."""

from __future__ import annotations

import re
from pathlib import Path

from graphql import OperationDefinitionNode, get_introspection_query, parse
from strawberry.extensions.validation_cache import _get_validate_cache

from fleetql.config import GraphQLSettings
from fleetql.schema import VALIDATION_CACHE_SIZE
from fleetql.schema.limits import measure_operation
from tests.conftest import GraphQLClient

README = Path(__file__).resolve().parents[1] / "README.md"

# graphql-armor's defaults (max-depth, max-aliases, max-tokens, max-directives).
ARMOR = {"depth": 6, "aliases": 15, "tokens": 1000, "directives": 50}

# The deepest query fleetql documents: each cluster's recent events with what changed (6).
RECENT_CHANGES = """
query RecentChanges {
  clusters(limit: 20) {
    items { name events(first: 5) { items { type changes { field old new } } } }
  }
}
"""
# One level more, through the ClusterEvent -> Cluster -> events cycle.
TOO_DEEP = """
{ events { items { cluster { events { items { changes { field } } } } } } }
"""


def errors_of(body: dict[str, object]) -> list[str]:
    errors = body.get("errors") or []
    assert isinstance(errors, list)
    return [str(error["message"]) for error in errors]


def test_default_limits_are_at_least_as_strict_as_graphql_armor() -> None:
    defaults = GraphQLSettings()
    assert defaults.max_depth <= ARMOR["depth"]
    assert defaults.max_aliases <= ARMOR["aliases"]
    assert defaults.max_tokens <= ARMOR["tokens"]
    assert defaults.max_directives <= ARMOR["directives"]


async def test_graphiql_introspection_query_passes_the_default_limits(api: GraphQLClient) -> None:
    # What GraphiQL sends, with every option graphql-core knows switched on (the largest form).
    query = get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
        one_of=True,
    )
    body = await api.post(query)
    assert "errors" not in body, body["errors"]
    names = {t["name"] for t in body["data"]["__schema"]["types"]}
    assert {"Cluster", "ClusterEvent", "Query"} <= names


async def test_the_deepest_realistic_query_fits_and_one_level_more_is_refused(
    api: GraphQLClient,
) -> None:
    document = parse(RECENT_CHANGES)
    operation = document.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    assert measure_operation(document, operation).depth == ARMOR["depth"]
    assert errors_of(await api.post(RECENT_CHANGES)) == []
    assert errors_of(await api.post(TOO_DEEP)) == ["query is 7 levels deep; at most 6 are allowed"]


def test_every_query_in_the_readme_fits_the_default_limits() -> None:
    blocks = re.findall(r"```graphql\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    for block in blocks:
        document = parse(block, max_tokens=ARMOR["tokens"])
        for operation in document.definitions:
            assert isinstance(operation, OperationDefinitionNode)
            size = measure_operation(document, operation)
            assert size.depth <= ARMOR["depth"] and size.aliases <= ARMOR["aliases"], block


async def test_sixteen_aliases_are_refused_and_fifteen_pass(api: GraphQLClient) -> None:
    def aliased(count: int) -> str:
        return "{ " + " ".join(f"a{i}: clusters(limit: 0) {{ total }}" for i in range(count)) + " }"

    assert errors_of(await api.post(aliased(15))) == []
    assert errors_of(await api.post(aliased(16))) == [
        "query uses 16 aliases; at most 15 are allowed"
    ]


async def test_directives_are_counted_through_fragments(api: GraphQLClient) -> None:
    fragment = "fragment F on Query { " + "__typename @skip(if: false) " * 10 + "}"
    five = "{ " + "...F " * 5 + "} " + fragment
    six = "{ " + "...F " * 5 + "...F @include(if: true) } " + fragment
    assert errors_of(await api.post(five)) == []
    assert errors_of(await api.post(six)) == ["query uses 61 directives; at most 50 are allowed"]


async def test_documents_over_a_thousand_tokens_are_refused_at_parse_time(
    api: GraphQLClient,
) -> None:
    # 4 tokens a field, no aliases: only the token limit can refuse it.
    query = "{ " + "clusters { total } " * 300 + "}"
    messages = errors_of(await api.post(query))
    assert messages == ["Syntax Error: Document contains more than 1000 tokens. Parsing aborted."]


async def test_limits_keep_the_validation_cache_hitting(api: GraphQLClient) -> None:
    """A rule built per request would make strawberry's ValidationCache miss every time (see
    STACK-NOTES); the limits are one class built with the schema, so repeats are hits."""
    cache = _get_validate_cache(VALIDATION_CACHE_SIZE)
    query = "query CacheProbe { clusters(limit: 1) { total items { name } } }"
    assert errors_of(await api.post(query)) == []
    before = cache.cache_info()
    for _ in range(20):
        assert errors_of(await api.post(query)) == []
    after = cache.cache_info()
    assert after.hits - before.hits == 20
    assert after.misses == before.misses
