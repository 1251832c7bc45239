"""What executing a list page and an events page costs in strawberry and graphql-core alone.

Runs in process, no I/O: the API's schema (``build_schema``, with its extensions, permissions
and resolvers) answers from records held in memory, through a context whose ``read`` returns
them instead of querying PostgreSQL; beside it the list benchmark's "GraphQL floor" schema (the
API's types and ``from_row`` under a bare root). CPU time per execution (``time.process_time``
over many runs, best of several rounds, since the machine is shared), and optionally a cProfile
of each document.

    python -m bench.graphql_cost [--runs 400] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import strawberry
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types import Info

from bench.history_queries import PAGE_FIELDS
from bench.list_queries import LIST_FIELDS, Preloaded, in_memory_schema
from fleetql.access import SYSTEM
from fleetql.config import Settings
from fleetql.db import clusters as db_clusters
from fleetql.db import events as db_events
from fleetql.db.clusters import ClusterRecord
from fleetql.db.events import LoggedEvent
from fleetql.db.models import ClusterStatus, EventType
from fleetql.metrics.instruments import Metrics
from fleetql.resolvers.clusters import ClusterPage as ClusterPageResult
from fleetql.resolvers.context import Context, Services
from fleetql.resolvers.history import HistoryPage
from fleetql.schema import build_schema
from fleetql.schema.scalars import SCALAR_MAP
from fleetql.schema.types import EventPage

__all__ = ["DOCUMENTS", "clusters", "events", "measure"]

LIST_DOCUMENT = f"{{ clusters(limit: 20) {{ total page limit items {{ {LIST_FIELDS} }} }} }}"
EVENTS_DOCUMENT = f"{{ events(first: 50) {{ {PAGE_FIELDS} }} }}"
DOCUMENTS = {"list page (20 clusters)": LIST_DOCUMENT, "events page (50)": EVENTS_DOCUMENT}


def clusters(count: int = 20) -> list[ClusterRecord]:
    """A page of clusters as the list benchmark's fleet has them: labels, metrics, an error."""
    now = datetime(2026, 11, 1, tzinfo=UTC)
    records = []
    for n in range(count):
        nodes = 3 + n % 7
        failing = n % 5 == 0
        records.append(
            ClusterRecord(
                id=uuid.UUID(int=n + 1),
                name=f"cluster-{n:05d}",
                description=f"cluster {n} of the benchmark fleet",
                labels={"env": "prod", "region": "eu", "tier": "web", "team": f"team-{n % 9}"},
                api_server_url=f"https://10.0.{n // 250}.{n % 250}:6443",
                created_at=now - timedelta(days=n),
                updated_at=now,
                status=ClusterStatus.UNREACHABLE if failing else ClusterStatus.HEALTHY,
                node_count=nodes,
                ready_node_count=nodes - (1 if failing else 0),
                cpu_capacity_cores=Decimal(nodes * 8),
                cpu_allocatable_cores=Decimal(nodes * 8) - Decimal("0.5"),
                cpu_usage_cores=Decimal("3.25"),
                memory_capacity_bytes=nodes * 34_359_738_368,
                memory_allocatable_bytes=nodes * 33_000_000_000,
                memory_usage_bytes=nodes * 10_000_000_000,
                kubernetes_version="v1.30.6",
                last_heartbeat_at=now - timedelta(seconds=n),
                last_checked_at=now,
                last_error_code="TIMEOUT" if failing else None,
                last_error_message="no answer from the API server within 30s" if failing else None,
                consecutive_failures=3 if failing else 0,
                version=n + 7,
                credential_kind="TOKEN",
                credential_expires_at=None,
                credential_subject=None,
                pending_status=None,
            )
        )
    return records


def events(count: int = 50) -> list[LoggedEvent]:
    """A page of the event log as the history benchmark seeds it (its mix of kinds)."""
    now = datetime(2026, 11, 1, tzinfo=UTC)
    changes: list[tuple[EventType, str | None, str | None, dict[str, list[Any]]]] = [
        (
            EventType.STATUS_CHANGED,
            "HEALTHY",
            "UNHEALTHY",
            {"status": ["HEALTHY", "UNHEALTHY"], "ready_node_count": [5, 3]},
        ),
        (
            EventType.CHECK_FAILED,
            None,
            "UNREACHABLE",
            {
                "last_error_code": [None, "TIMEOUT"],
                "last_error_message": [None, "no answer from the API server within 30s"],
                "consecutive_failures": [0, 1],
            },
        ),
        (
            EventType.NODES_CHANGED,
            None,
            "HEALTHY",
            {
                "node_count": [5, 6],
                "ready_node_count": [5, 6],
                "cpu_capacity_cores": ["40", "48"],
                "memory_capacity_bytes": [171798691840, 206158430208],
            },
        ),
        (
            EventType.UPDATED,
            None,
            "HEALTHY",
            {"labels": [{"env": "prod", "tier": "web"}, {"env": "prod", "owner": "team-1"}]},
        ),
    ]
    logged = []
    for n in range(count):
        type_, previous, status, change = changes[n % len(changes)]
        logged.append(
            LoggedEvent(
                id=100_000 - n,
                cluster_id=uuid.UUID(int=n % 20 + 1),
                type=type_,
                previous_status=previous,
                status=status,
                changes=change,
                message=f"event {n}",
                actor=None if n % 3 else "alice",
                at=now - timedelta(minutes=n),
            )
        )
    return logged


class InMemoryContext(Context):
    """The API's context, with reads answered from memory (what ``db`` would have returned)."""

    answers: dict[Callable[..., Any], Any]

    async def read(self, fetch: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self.answers[fetch]


def api_contexts() -> Callable[[], InMemoryContext]:
    """A new context per request, as the app makes one; services and answers are built once."""
    services = Services(
        settings=Settings(),
        sessions=cast(Any, None),
        reads=cast(Any, None),
        cipher=cast(Any, None),
        events=cast(Any, None),
        relay=cast(Any, None),
        authenticator=cast(Any, None),
        socket_guard=cast(Any, None),
        metrics=Metrics(),
    )
    answers: dict[Callable[..., Any], Any] = {
        # The resolver asks for one more than the page (whether a next page exists).
        db_clusters.list_clusters: (10_000, clusters(21)),
        db_events.list_events: db_events.EventPage(items=events(), has_more=True),
    }

    def context() -> InMemoryContext:
        made = InMemoryContext(services=services, request_id="bench", principal=SYSTEM)
        made.answers = answers
        return made

    return context


@strawberry.type
class EventsFloorQuery:
    """The events page's floor: the API's EventPage from memory, under a bare root."""

    @strawberry.field
    async def events(self, info: Info[Preloaded, None], first: int = 20) -> EventPage:
        fetched = info.context.fetched
        assert isinstance(fetched, HistoryPage)
        return EventPage.from_result(fetched)


def events_floor_schema() -> strawberry.Schema:
    return strawberry.Schema(
        query=EventsFloorQuery,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        extensions=[lambda: ParserCache(maxsize=256), lambda: ValidationCache(maxsize=256)],
    )


@dataclass(frozen=True)
class Case:
    name: str
    schema: strawberry.Schema
    document: str
    context: Callable[[], object]


def cases() -> list[Case]:
    api = build_schema()
    # The same schema on strawberry's own executor: what the plain-field path saves.
    stock = build_schema()
    stock.execution_context_class = StrawberryGraphQLCoreExecutionContext
    api_context = api_contexts()
    list_page = ClusterPageResult(
        total=10_000, page=1, limit=20, items=clusters(20), end_cursor="x", has_next_page=True
    )
    history = HistoryPage(events=events(), has_more=True)
    return [
        Case("list, API schema", api, LIST_DOCUMENT, api_context),
        Case("list, API, stock executor", stock, LIST_DOCUMENT, api_context),
        Case("list, floor schema", in_memory_schema(), LIST_DOCUMENT, lambda: Preloaded(list_page)),
        Case("events, API schema", api, EVENTS_DOCUMENT, api_context),
        Case("events, API, stock executor", stock, EVENTS_DOCUMENT, api_context),
        Case(
            "events, floor schema",
            events_floor_schema(),
            EVENTS_DOCUMENT,
            lambda: Preloaded(history),  # type: ignore[arg-type]
        ),
    ]


async def _execute(case: Case) -> dict[str, Any]:
    result = await case.schema.execute(case.document, context_value=case.context())
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


async def measure(case: Case, *, runs: int, rounds: int) -> float:
    """Best-of-``rounds`` CPU microseconds per execution over ``runs`` executions."""
    for _ in range(20):
        await _execute(case)
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(runs):
            await _execute(case)
        best = min(best, (time.process_time() - started) / runs * 1e6)
    return best


async def profile(case: Case, *, runs: int, top: int = 25) -> None:
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(runs):
        await _execute(case)
    profiler.disable()
    print(f"\n--- {case.name}: {runs} runs")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", default="")
    arguments = parser.parse_args()
    selected = [case for case in cases() if arguments.only in case.name]
    # The same answer from both schemas: the harness measures what the API returns.
    for case in selected:
        await _execute(case)
    for case in selected:
        if arguments.profile:
            await profile(case, runs=arguments.runs)
        else:
            cost = await measure(case, runs=arguments.runs, rounds=arguments.rounds)
            print(f"{case.name:28} {cost:8.0f} µs/execution", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
