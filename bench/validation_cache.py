"""What the query limits cost per request, and whether the validation cache still hits.

strawberry's ``QueryDepthLimiter`` and ``MaxAliasesLimiter`` build a new validation rule class
for every request, so ``ValidationCache`` (keyed by the rule classes) misses every time (see
STACK-NOTES). fleetql's limits are one rule class built with the schema. This runs the same
realistic document through three schemas in this process — no limits (the floor), fleetql's
rule, strawberry's limiters — and reports microseconds per request and the cache's hits. The
document's one real field is skipped (``@skip(if: true)``), so no resolver or database runs and
what is left is parsing (cached), validation and the executor's fixed cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import strawberry
from graphql import ASTValidationRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.extensions.validation_cache import _get_validate_cache
from strawberry.schema.config import StrawberryConfig

from fleetql.config import GraphQLSettings
from fleetql.schema import VALIDATION_CACHE_SIZE, build_schema
from fleetql.schema.mutation import Mutation
from fleetql.schema.query import Query
from fleetql.schema.scalars import SCALAR_MAP
from fleetql.schema.subscription import Subscription

REQUESTS, QUICK_REQUESTS = 5_000, 1_000
DOCUMENT = """
query Dashboard($selector: String) {
  __typename
  clusters(filter: {labelSelector: $selector}, limit: 20, orderBy: {field: STATUS})
    @skip(if: true) {
    total page limit
    items {
      id name status nodeCount readyNodeCount kubernetesVersion lastHeartbeatAt
      lastError { code message } labels { key value }
      events(first: 5) { items { type at changes { field old new } } }
    }
  }
}
"""


def _schema(*limits: Callable[[], Any]) -> strawberry.Schema:
    return strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        extensions=[
            lambda: MaxTokensLimiter(max_token_count=1000),
            *limits,
            lambda: ParserCache(maxsize=256),
            lambda: ValidationCache(maxsize=VALIDATION_CACHE_SIZE),
        ],
    )


def _schemas() -> dict[str, strawberry.Schema]:
    settings = GraphQLSettings()
    fleetql_rules: list[type[ASTValidationRule]] = []
    for extension in build_schema(settings).get_extensions():
        if isinstance(extension, AddValidationRules):
            fleetql_rules = list(extension.validation_rules)
    return {
        "no limits (floor)": _schema(),
        "fleetql rule": _schema(lambda: AddValidationRules(fleetql_rules)),
        "strawberry limiters": _schema(
            lambda: QueryDepthLimiter(max_depth=settings.max_depth),
            lambda: MaxAliasesLimiter(max_alias_count=settings.max_aliases),
        ),
    }


async def _measure(schema: strawberry.Schema, requests: int) -> dict[str, float]:
    cache = _get_validate_cache(VALIDATION_CACHE_SIZE)
    variables = {"selector": "env=prod"}
    for _ in range(20):  # warm the parser and validation caches
        result = await schema.execute(DOCUMENT, variable_values=variables)
        assert not result.errors, result.errors
    before = cache.cache_info()
    started = time.perf_counter()
    for _ in range(requests):
        await schema.execute(DOCUMENT, variable_values=variables)
    elapsed = time.perf_counter() - started
    after = cache.cache_info()
    return {
        "us_per_request": elapsed / requests * 1e6,
        "cache_hit_rate": (after.hits - before.hits) / requests,
    }


async def run(quick: bool) -> dict[str, Any]:
    """Each schema in turn, on the same document."""
    requests = QUICK_REQUESTS if quick else REQUESTS
    figures = {name: await _measure(schema, requests) for name, schema in _schemas().items()}
    return {"requests": requests, "schemas": figures}


def markdown(result: dict[str, Any]) -> str:
    """The section of RESULTS.md: cost per request and cache hit rate beside the floor."""
    floor = result["schemas"]["no limits (floor)"]["us_per_request"]
    rows = [
        "## Query limits and the validation cache\n",
        f"{result['requests']:,} executions of one dashboard query (depth 6, its one real field "
        "skipped, so no resolver runs) in this process, through ParserCache and ValidationCache. "
        "**Floor**: no depth or alias limit. fleetql's limits are one validation rule class built "
        "with the schema; strawberry's QueryDepthLimiter and MaxAliasesLimiter build one per "
        "request.\n",
        "| schema | µs/request | ratio to floor | validation cache hits |",
        "|---|---|---|---|",
    ]
    for name, figures in result["schemas"].items():
        rows.append(
            f"| {name} | {figures['us_per_request']:.0f} | "
            f"{figures['us_per_request'] / floor:.2f}x | {figures['cache_hit_rate']:.0%} |"
        )
    return "\n".join(rows) + "\n"
