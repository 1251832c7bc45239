"""The plain-field fast path answers exactly what graphql-core's own execution answers.

Every document runs twice over the same objects: with strawberry's stock execution context and
with fleetql's (``PerEventExecutionContext``, which completes plain fields directly). Data, the
order of keys, error messages and error paths must be the same, for ordinary values and for
every value the fast path has to hand back to graphql-core.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import strawberry
from graphql import GraphQLObjectType
from strawberry.extensions import SchemaExtension
from strawberry.scalars import JSON
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types import Info

from bench.graphql_cost import clusters, events
from fleetql.resolvers.clusters import ClusterPage as ClusterPageResult
from fleetql.resolvers.history import HistoryPage
from fleetql.schema import PerEventExecutionContext
from fleetql.schema.plainfields import Leaf, basic_field
from fleetql.schema.scalars import SCALAR_MAP, Long
from fleetql.schema.types import ClusterPage, EventPage


@strawberry.enum
class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Shade(enum.StrEnum):
    LIGHT = "light"
    DARK = "dark"


strawberry.enum(Shade)


@strawberry.type
class Part:
    label: str
    weight: int | None


@strawberry.type
class Thing:
    name: str
    count: int
    ratio: float | None
    size: Long | None
    colour: Colour
    shade: Shade | None
    tags: list[str]
    notes: list[str | None] | None
    at: datetime
    blob: JSON | None
    id: strawberry.ID
    parts: list[Part]
    best: Part | None
    spare: list[Part | None] | None

    @strawberry.field
    def shout(self) -> str:
        return self.name.upper()


def part(label: Any, weight: Any = 1) -> Part:
    made = Part.__new__(Part)
    made.__dict__.update(label=label, weight=weight)
    return made


def thing(**changes: Any) -> Thing:
    values: dict[str, Any] = {
        "name": "a",
        "count": 3,
        "ratio": 0.5,
        "size": 2**40,
        "colour": Colour.GREEN,
        "shade": Shade.DARK,
        "tags": ["x", "y"],
        "notes": ["n", None],
        "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "blob": {"k": [1, "v"]},
        "id": strawberry.ID("7"),
        "parts": [part("p"), part("q")],
        "best": part("b"),
        "spare": [None, part("s")],
    }
    values.update(changes)
    made = Thing.__new__(Thing)
    made.__dict__.update(values)  # values the annotations would not allow, on purpose
    return made


@dataclass
class Holder:
    things: list[Thing]


@strawberry.type
class Query:
    @strawberry.field
    def things(self, info: Info) -> list[Thing]:
        holder: Holder = info.context
        return holder.things

    @strawberry.field
    async def later(self, info: Info) -> list[Thing]:
        await asyncio.sleep(0)
        holder: Holder = info.context
        return holder.things


PARTS = "parts { label weight } best { label } spare { weight label }"
ALL = f"name count ratio size colour shade tags notes at blob id shout {PARTS}"


def schemas(**kwargs: Any) -> tuple[strawberry.Schema, strawberry.Schema]:
    config = StrawberryConfig(scalar_map=SCALAR_MAP)
    stock = strawberry.Schema(
        query=Query,
        config=config,
        execution_context_class=StrawberryGraphQLCoreExecutionContext,
        **kwargs,
    )
    fast = strawberry.Schema(
        query=Query, config=config, execution_context_class=PerEventExecutionContext, **kwargs
    )
    return stock, fast


def outcome(result: Any) -> tuple[bytes, list[tuple[str, Any]]]:
    """The data as bytes (so key order counts) and each error's message and path."""
    errors = [(error.message, error.path) for error in result.errors or ()]
    return orjson.dumps(result.data), sorted(errors, key=repr)


async def both(document: str, things: list[Thing], **kwargs: Any) -> Any:
    stock, fast = schemas(**kwargs)
    expected = await stock.execute(document, context_value=Holder(things))
    actual = await fast.execute(document, context_value=Holder(things))
    assert outcome(actual) == outcome(expected)
    return actual


async def test_ordinary_values_come_out_as_graphql_core_makes_them() -> None:
    result = await both(f"{{ things {{ {ALL} }} later {{ {ALL} }} }}", [thing(), thing(name="b")])
    assert result.errors is None
    first = result.data["things"][0]
    assert first["colour"] == "GREEN" and first["shade"] == "DARK"
    assert first["at"] == "2026-01-02T03:04:05+00:00"
    assert first["size"] == 2**40


async def test_aliases_fragments_directives_and_typename_are_kept() -> None:
    document = """
    query ($yes: Boolean!) {
      things {
        ...Parts
        n: name
        name
        count @include(if: $yes)
        ratio @skip(if: $yes)
        __typename
        again: colour
      }
    }
    fragment Parts on Thing { tags name shade }
    """
    stock, fast = schemas()
    for yes in (True, False):
        variables = {"yes": yes}
        expected = await stock.execute(
            document, variable_values=variables, context_value=Holder([thing()])
        )
        actual = await fast.execute(
            document, variable_values=variables, context_value=Holder([thing()])
        )
        assert outcome(actual) == outcome(expected)
        assert actual.errors is None


@pytest.mark.parametrize(
    "changes",
    [
        {"name": None},  # null in a non-null field
        {"count": 2**40},  # outside GraphQL's Int
        {"count": "12"},  # a string where an Int goes
        {"ratio": float("nan")},
        {"colour": "GREEN"},  # not a member
        {"shade": "light"},  # a str equal to a member's value
        {"tags": ["x", None]},  # null in a list of non-null strings
        {"tags": "xy"},  # a string where a list goes
        {"tags": ("x", "y")},  # another iterable
        {"notes": [None, 3]},
        {"name": 12},
        {"name": ValueError("boom")},  # an exception as the value
        {"id": 12},
        {"id": object()},
        {"at": "yesterday"},
        {"blob": RuntimeError("no")},
        {"parts": [part(None)]},  # null deep inside a list of objects
        {"parts": [part("p", weight=2**40)]},
        {"parts": None},
        {"parts": [None]},
        {"parts": (part("t"),)},
        {"best": part(None)},
        {"best": ValueError("gone")},
        {"spare": [part("x", weight="heavy")]},
        {"best": object()},
    ],
)
async def test_unusual_values_get_graphql_cores_answer(changes: dict[str, Any]) -> None:
    await both(f"{{ things {{ {ALL} }} }}", [thing(), thing(**changes), thing()])


async def test_awaitable_values_are_awaited_as_graphql_core_does() -> None:
    async def name() -> str:
        return "late"

    async def tags() -> list[str]:
        return ["t"]

    async def best() -> Part:
        return part("soon")

    stock, fast = schemas()
    document = "{ things { name tags best { label } } }"
    expected = await stock.execute(
        document, context_value=Holder([thing(name=name(), tags=tags(), best=best())])
    )
    actual = await fast.execute(
        document, context_value=Holder([thing(name=name(), tags=tags(), best=best())])
    )
    assert outcome(actual) == outcome(expected)
    assert actual.data == {"things": [{"name": "late", "tags": ["t"], "best": {"label": "soon"}}]}


async def test_resolve_middleware_still_sees_every_field() -> None:
    seen: list[str] = []

    class Spy(SchemaExtension):
        def resolve(self, _next: Any, root: Any, info: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(info.field_name)
            return _next(root, info, *args, **kwargs)

    _stock, fast = schemas(extensions=[Spy])
    result = await fast.execute(
        "{ things { name best { label } } }", context_value=Holder([thing()])
    )
    assert result.errors is None
    assert seen == ["things", "name", "best", "label"]


def test_basic_fields_are_plain_and_resolvers_are_not() -> None:
    _stock, fast = schemas()
    thing_type = fast._schema.type_map["Thing"]
    assert isinstance(thing_type, GraphQLObjectType)
    assert isinstance(basic_field(thing_type, "name"), Leaf)
    assert isinstance(basic_field(thing_type, "tags"), Leaf)
    assert basic_field(thing_type, "parts") is not None
    assert basic_field(thing_type, "shout") is None
    assert basic_field(thing_type, "__typename") is None


async def test_the_api_types_answer_a_list_page_and_an_events_page_alike() -> None:
    page = ClusterPageResult(
        total=3, page=1, limit=20, items=clusters(20), end_cursor="c", has_next_page=True
    )
    history = HistoryPage(events=events(50), has_more=False)

    @strawberry.type
    class Pages:
        @strawberry.field
        def clusters(self) -> ClusterPage:
            return ClusterPage.from_result(page)

        @strawberry.field
        def events(self) -> EventPage:
            return EventPage.from_result(history)

    document = """{
      clusters { total page limit pageInfo { endCursor hasNextPage }
        items { id name description labels { key value } apiServerUrl status nodeCount
          readyNodeCount cpuCapacityCores cpuAllocatableCores cpuUsageCores memoryCapacityBytes
          memoryAllocatableBytes memoryUsageBytes kubernetesVersion lastHeartbeatAt
          lastCheckedAt lastError { code message } consecutiveFailures createdAt updatedAt
          version credential { kind expiresAt subject } pendingStatus } }
      events { items { id type kind clusterId previousStatus status changedFields
          changes { field old new } message actor at } pageInfo { endCursor hasNextPage } }
    }"""
    config = StrawberryConfig(scalar_map=SCALAR_MAP)
    stock = strawberry.Schema(
        query=Pages, config=config, execution_context_class=StrawberryGraphQLCoreExecutionContext
    )
    fast = strawberry.Schema(
        query=Pages, config=config, execution_context_class=PerEventExecutionContext
    )
    expected = await stock.execute(document)
    actual = await fast.execute(document)
    assert expected.errors is None
    assert outcome(actual) == outcome(expected)
    assert actual.data is not None
    assert actual.data["clusters"]["items"][0]["status"] == "UNREACHABLE"
