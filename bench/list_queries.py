"""List queries at 10,000 and 100,000 clusters: the API beside what its parts cost alone.

Each query is sent to ``fleetql serve`` (one process) from a load generator in another process,
at 1 and at 32 clients, and set beside two floors measured in the same run: the SQL the server
runs for it, replayed through one asyncpg connection, and Strawberry executing the same document
over the same records held in memory. EXPLAIN ANALYZE and an in-process CPU profile say where the
rest of the time goes.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import httpx
import strawberry
from sqlalchemy import event
from sqlalchemy.engine import Engine
from strawberry.extensions import ParserCache, ValidationCache
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from bench._support import (
    Database,
    bench_database,
    percentiles,
    running_http_floor,
    running_servers,
)
from bench.list_queries_fleet import seed_fleet
from bench.list_queries_report import markdown
from bench.loadgen import CpuMeter, Job, LoadGenerator, in_process_settings, load_generator
from bench.loadgen import profile_in_process as profile_app
from fleetql.access import SYSTEM
from fleetql.app import create_app, open_services
from fleetql.db.clusters import ClusterRecord
from fleetql.db.models import ClusterStatus
from fleetql.resolvers import clusters
from fleetql.resolvers.clusters import ClusterPage as ClusterPageResult
from fleetql.resolvers.context import Context
from fleetql.schema.inputs import ClusterFilter, ClusterOrder
from fleetql.schema.plainfields import PlainFieldExecutionContext
from fleetql.schema.scalars import SCALAR_MAP
from fleetql.schema.types import Cluster, ClusterPage

__all__ = ["markdown", "run"]

SIZES = (10_000, 100_000)
QUICK_SIZES = (10_000,)
CONCURRENCY = (1, 32)
# fleetql serve is one uvicorn process. On 2 cores shared with PostgreSQL that is the right
# count: Python serves on one core, PostgreSQL and the kernel take the other. The pool keeps its
# defaults (10 + 10), more than one process can keep busy.
# `fleetql serve` processes for 2 cores, clients spread across them as a load balancer would
# (one client uses the first): a second process paid on this machine (see compare_workers).
WORKERS = 2
SERVER_ENV = {"FLEETQL_DATABASE__POOL_SIZE": "10", "FLEETQL_DATABASE__MAX_OVERFLOW": "10"}


@dataclass(frozen=True)
class Timing:
    """How long each measurement runs; --quick keeps the whole benchmark under a minute or so."""

    warmup: float  # seconds of load before recording
    duration: float  # seconds recorded per query and concurrency
    floor_seconds: float  # seconds spent repeating each floor
    profile_requests: int  # requests profiled per query


QUICK = Timing(warmup=0.3, duration=1.5, floor_seconds=0.5, profile_requests=60)
FULL = Timing(warmup=0.5, duration=4.0, floor_seconds=1.5, profile_requests=200)

PROFILE_SECONDS = 4.0  # per query, whatever the request count: a slow query needs fewer

TARGETS = {"p50_ms": 5.0, "p99_ms": 20.0, "rps_32": 500.0, "p99_32_ms": 100.0, "ratio": 3.0}

# --- the queries ----------------------------------------------------------------------------

Fetched = ClusterPageResult | ClusterRecord | None
Fetch = Callable[[Context, uuid.UUID], Awaitable[Fetched]]

LIST_FIELDS = (
    "id name status nodeCount readyNodeCount kubernetesVersion cpuCapacityCores "
    "memoryCapacityBytes lastHeartbeatAt lastError { code message } labels { key value }"
)
DETAIL_FIELDS = (
    "id name description apiServerUrl status kubernetesVersion nodeCount readyNodeCount "
    "cpuCapacityCores cpuAllocatableCores cpuUsageCores memoryCapacityBytes "
    "memoryAllocatableBytes memoryUsageBytes lastHeartbeatAt lastCheckedAt consecutiveFailures "
    "createdAt updatedAt lastError { code message } labels { key value }"
)


@dataclass(frozen=True)
class ListQuery:
    """A console's query, and the resolver call that fetches the same records (for the floors)."""

    name: str
    title: str
    document: str
    fetch: Fetch
    by_id: bool = False

    def body(self, cluster_id: uuid.UUID) -> str:
        variables = {"id": str(cluster_id)} if self.by_id else {}
        return json.dumps({"query": self.document, "variables": variables})


def _list_document(arguments: str, *, total: bool = True) -> str:
    counted = "total " if total else ""
    return f"{{ clusters({arguments}) {{ {counted}page limit items {{ {LIST_FIELDS} }} }} }}"


def _listing(**arguments: Any) -> Fetch:
    async def fetch(context: Context, _cluster_id: uuid.UUID) -> Fetched:
        return await clusters.list_clusters(context, **arguments)

    return fetch


async def _one_cluster(context: Context, cluster_id: uuid.UUID) -> Fetched:
    return await clusters.get_cluster(context, cluster_id)


FAILING = (ClusterStatus.UNHEALTHY, ClusterStatus.UNREACHABLE)
SELECTOR = "env=prod,tier in (web,api)"
QUERIES = (
    ListQuery("first_page", "first page", _list_document("limit: 20"), _listing(limit=20)),
    ListQuery(
        "first_page_no_total",
        "first page, no total",
        _list_document("limit: 20", total=False),
        _listing(limit=20, count=False),
    ),
    ListQuery(
        "page_200", "page 200", _list_document("page: 200, limit: 20"), _listing(page=200, limit=20)
    ),
    ListQuery(
        "status",
        "status UNHEALTHY, UNREACHABLE",
        _list_document("filter: {status: [UNHEALTHY, UNREACHABLE]}, limit: 20"),
        _listing(statuses=FAILING, limit=20),
    ),
    ListQuery(
        "search",
        'search "checkout-eu"',
        _list_document('filter: {search: "checkout-eu"}, limit: 20'),
        _listing(search="checkout-eu", limit=20),
    ),
    ListQuery(
        "selector",
        f"labelSelector {SELECTOR}",
        _list_document(f'filter: {{labelSelector: "{SELECTOR}"}}, limit: 20'),
        _listing(label_selector=SELECTOR, limit=20),
    ),
    ListQuery(
        "cluster",
        "cluster(id)",
        f"query One($id: ID!) {{ cluster(id: $id) {{ {DETAIL_FIELDS} }} }}",
        _one_cluster,
        by_id=True,
    ),
)


def _ids(fetched: Fetched) -> list[str]:
    if isinstance(fetched, ClusterPageResult):
        return [str(record.id) for record in fetched.items]
    return [] if fetched is None else [str(fetched.id)]


def _ids_in_response(data: dict[str, Any]) -> list[str]:
    if "clusters" in data:
        return [item["id"] for item in data["clusters"]["items"]]
    return [] if data["cluster"] is None else [data["cluster"]["id"]]


# --- floor (b): GraphQL execution over records in memory ------------------------------------


@dataclass(frozen=True)
class Preloaded:
    """What the in-memory schema's resolvers answer with."""

    fetched: Fetched


@strawberry.type
class InMemoryQuery:
    """The API's Query root (same names, arguments, types and ``from_row``), answering from
    memory: executing a document against it costs what GraphQL itself costs for that data."""

    @strawberry.field
    async def clusters(
        self,
        info: Info[Preloaded, None],
        filter: ClusterFilter | None = None,
        page: int = 1,
        limit: int = 20,
        order_by: ClusterOrder | None = None,
    ) -> ClusterPage:
        fetched = info.context.fetched
        assert isinstance(fetched, ClusterPageResult)
        return ClusterPage.from_result(fetched)

    @strawberry.field
    async def cluster(self, info: Info[Preloaded, None], id: strawberry.ID) -> Cluster | None:
        fetched = info.context.fetched
        assert not isinstance(fetched, ClusterPageResult)
        return None if fetched is None else Cluster.from_row(fetched)


def in_memory_schema() -> strawberry.Schema:
    """Only the caches a well-configured server has, so parsing and validation are not repeated;
    the API's own extensions (limits, masking) count as its overhead, not as the floor. The
    executor is fleetql's (plain fields read straight from their objects): the floor is the
    cheapest execution this stack offers, not strawberry's stock one."""
    return strawberry.Schema(
        query=InMemoryQuery,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        extensions=[lambda: ParserCache(maxsize=256), lambda: ValidationCache(maxsize=256)],
        execution_context_class=PlainFieldExecutionContext,
    )


# --- floor (a): the SQL, replayed -----------------------------------------------------------

Statement = tuple[str, tuple[Any, ...]]


@contextmanager
def captured_statements() -> Iterator[list[Statement]]:
    """Every statement (SQL and parameters, as handed to asyncpg) run in this process meanwhile."""
    captured: list[Statement] = []

    def record(*args: Any) -> None:
        _connection, _cursor, statement, parameters, _context, _many = args
        captured.append((statement, tuple(parameters or ())))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield captured
    finally:
        event.remove(Engine, "before_cursor_execute", record)


async def repeat_timed(
    action: Callable[[], Awaitable[object]], *, seconds: float, at_least: int = 30
) -> list[float]:
    """Latencies of ``action`` run back to back for ``seconds`` (after a few unrecorded runs)."""
    for _ in range(5):
        await action()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < at_least or time.perf_counter() < deadline:
        started = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - started)
    return samples


_EXPLAIN_TIME = re.compile(r"^(Planning|Execution) Time: ([\d.]+) ms$", re.MULTILINE)


async def explain(connection: asyncpg.Connection, statement: Statement) -> dict[str, Any]:
    """EXPLAIN ANALYZE of one statement: its times and its plan (kept whole in results.json)."""
    sql, parameters = statement
    rows = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *parameters)
    plan = "\n".join(row[0] for row in rows)
    times = {kind.lower(): float(ms) for kind, ms in _EXPLAIN_TIME.findall(plan)}
    kind = "count" if sql.lstrip().upper().startswith("SELECT COUNT") else "rows"
    return {"kind": kind, "planning_ms": times.get("planning"), **times, "plan": plan}


# --- measuring one size ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """What one run holds open: the server, its load generator, meters and in-process services."""

    urls: Sequence[str]
    server_pids: Sequence[int]
    load: LoadGenerator
    meter: CpuMeter
    connection: asyncpg.Connection
    context: Context
    schema: strawberry.Schema
    timing: Timing


async def measure_load(
    bench: Bench, body: str, concurrency: int, *, urls: Sequence[str], meter: CpuMeter
) -> dict[str, Any]:
    """Latency and throughput at ``concurrency`` clients, with each party's CPU per request."""
    job = Job(
        urls=list(urls),
        bodies=[body],
        concurrency=concurrency,
        duration=bench.timing.duration,
        warmup=bench.timing.warmup,
    )
    async with meter.measuring() as measured:
        result = await bench.load.run(job)
    cpu, per_request = measured[0], 1000 / max(1, result.completed)
    return {
        **percentiles(result.latencies),
        "rps": round(result.rate, 1),
        "server_cpu_ms": round(cpu.server * per_request, 3),
        "postgres_cpu_ms": round(cpu.postgres * per_request, 3),
        "client_cpu_ms": round(cpu.client * per_request, 3),
        "other_cores": round(cpu.others / cpu.wall, 2),
    }


async def measure_query(bench: Bench, query: ListQuery, cluster_id: uuid.UUID) -> dict[str, Any]:
    """The server at each concurrency, both floors, and EXPLAIN ANALYZE, for one query."""
    with captured_statements() as statements:
        fetched = await query.fetch(bench.context, cluster_id)
    body = query.body(cluster_id)
    response = await _check_same_answer(bench.urls[0], body, fetched)
    server = {
        str(c): await measure_load(bench, body, c, urls=bench.urls[:WORKERS], meter=bench.meter)
        for c in CONCURRENCY
    }

    async def replay_sql() -> None:
        for sql, parameters in statements:
            await bench.connection.fetch(sql, *parameters)

    payload = json.loads(body)

    async def execute_graphql() -> None:
        result = await bench.schema.execute(
            payload["query"],
            variable_values=payload["variables"],
            context_value=Preloaded(fetched),
        )
        assert result.errors is None, result.errors

    async def resolve() -> None:
        await query.fetch(bench.context, cluster_id)

    seconds = bench.timing.floor_seconds
    sql_floor = percentiles(await repeat_timed(replay_sql, seconds=seconds))
    resolver = percentiles(await repeat_timed(resolve, seconds=seconds))
    graphql_floor = percentiles(await repeat_timed(execute_graphql, seconds=seconds))
    floors = sql_floor["p50_ms"] + graphql_floor["p50_ms"]
    return {
        "server": server,
        "http_floor": await measure_http_floor(bench, body, response),
        "sql_floor": sql_floor,
        "resolver": resolver,
        "graphql_floor": graphql_floor,
        "ratio": round(server["1"]["p50_ms"] / floors, 2),
        "rows": len(_ids(fetched)),
        "explain": [await explain(bench.connection, statement) for statement in statements],
    }


async def _check_same_answer(url: str, body: str, fetched: Fetched) -> bytes:
    """The floors must answer the query the server answers: the same clusters, in order.
    Returns the server's response, for the HTTP floor to send."""
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            url, content=body, headers={"content-type": "application/json"}
        )
    payload = response.json()
    if "errors" in payload or _ids_in_response(payload["data"]) != _ids(fetched):
        raise RuntimeError(f"floor and server disagree: {response.text[:300]}")
    return response.content


async def measure_http_floor(bench: Bench, body: str, response: bytes) -> dict[str, Any]:
    """One client posting ``body`` to a bare uvicorn that answers with ``response``: the
    request's cost in HTTP, loopback and the load generator alone."""
    with running_http_floor(response) as url:
        return await measure_load(bench, body, 1, urls=[url], meter=bench.meter)


async def measure_size(bench: Bench, size: int) -> dict[str, Any]:
    """Every query at this fleet size; cluster(id) asks for the cluster in the middle by name."""
    cluster_id = await bench.connection.fetchval(
        "SELECT id FROM clusters ORDER BY name OFFSET $1 LIMIT 1", size // 2
    )
    queries = {}
    for query in QUERIES:
        queries[query.name] = await measure_query(bench, query, cluster_id)
        print(f"  {size:,} clusters, {query.name}: {_summary(queries[query.name])}", flush=True)
    return {"clusters": size, "cluster_id": str(cluster_id), "queries": queries}


def _summary(result: dict[str, Any]) -> str:
    one, many = result["server"]["1"], result["server"]["32"]
    return (
        f"p50 {one['p50_ms']} ms, 32 clients {many['rps']}/s p99 {many['p99_ms']} ms, "
        f"floors {result['sql_floor']['p50_ms']} + {result['graphql_floor']['p50_ms']} ms"
    )


# --- where the time goes --------------------------------------------------------------------


async def profile_queries(
    database_url: str, key: str, cluster_id: uuid.UUID, requests: int
) -> dict[str, Any]:
    """Where the server's own time goes, by layer, for each query (in this process)."""
    app = create_app(in_process_settings(database_url, key), migrate=False)
    profiles = {}
    async with app.router.lifespan_context(app):
        for query in QUERIES:
            profile = await profile_app(
                app, [query.body(cluster_id)], requests=requests, warmup=5, seconds=PROFILE_SECONDS
            )
            profiles[query.name] = asdict(profile)
    return profiles


def evaluate_targets(size: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """Which of the issue's targets each query meets at this size."""
    verdicts = {}
    for name, result in size["queries"].items():
        one, many = result["server"]["1"], result["server"]["32"]
        verdicts[name] = {
            "p50_1": one["p50_ms"] <= TARGETS["p50_ms"],
            "p99_1": one["p99_ms"] <= TARGETS["p99_ms"],
            "rps_32": many["rps"] >= TARGETS["rps_32"],
            "p99_32": many["p99_ms"] <= TARGETS["p99_32_ms"],
            "floors": result["ratio"] <= TARGETS["ratio"],
        }
    return verdicts


async def compare_workers(bench: Bench, cluster_id: uuid.UUID) -> dict[str, Any]:
    """32 clients on one server process, then spread over two on one database, back to back so
    that both see the same machine: does a second process pay on 2 cores shared with
    PostgreSQL?"""
    figures: dict[str, Any] = {}
    clients = max(CONCURRENCY)
    one = await CpuMeter.attach(bench.server_pids[:1], bench.load, bench.connection)
    both = await CpuMeter.attach(bench.server_pids[:2], bench.load, bench.connection)
    for query in (QUERIES[0], QUERIES[-1]):
        body = query.body(cluster_id)
        figures[query.name] = {
            "1": await measure_load(bench, body, clients, urls=bench.urls[:1], meter=one),
            "2": await measure_load(bench, body, clients, urls=bench.urls[:2], meter=both),
        }
    return figures


async def measure_sizes(bench: Bench, database: Database, sizes: Sequence[int]) -> list[Any]:
    """Grow one fleet through ``sizes``, measuring every query at each."""
    results, seeded = [], 0
    for size in sizes:
        await seed_fleet(bench.connection, start=seeded, stop=size, key_id=database.key.key_id)
        seeded = size
        results.append(await measure_size(bench, size))
    return results


async def run(quick: bool) -> dict[str, Any]:
    """Seed, measure each size in turn, try a second worker, then profile the largest size."""
    timing, sizes = (QUICK, QUICK_SIZES) if quick else (FULL, SIZES)
    async with bench_database() as database:
        key = database.key.to_base64()
        settings = in_process_settings(database.url, key)
        # Two processes for the comparison with one, whatever WORKERS measures with.
        with running_servers(database, max(WORKERS, 2), env=SERVER_ENV) as servers:
            pids = [server.pid for server in servers]
            connection = await asyncpg.connect(database.dsn)
            try:
                async with load_generator() as load, open_services(settings, migrate=False) as svc:
                    bench = Bench(
                        urls=[server.url for server in servers],
                        load=load,
                        server_pids=pids,
                        meter=await CpuMeter.attach(pids[:WORKERS], load, connection),
                        connection=connection,
                        context=Context(services=svc, request_id="bench-floor", principal=SYSTEM),
                        schema=in_memory_schema(),
                        timing=timing,
                    )
                    results = await measure_sizes(bench, database, sizes)
                    cluster_id = uuid.UUID(results[-1]["cluster_id"])
                    workers = await compare_workers(bench, cluster_id)
            finally:
                await connection.close()
        profile = await profile_queries(database.url, key, cluster_id, timing.profile_requests)
    return {
        "titles": {query.name: query.title for query in QUERIES},
        "target_clusters": max(SIZES),
        "workers": WORKERS,
        "timing": asdict(timing),
        "targets": TARGETS,
        "sizes": results,
        "verdicts": evaluate_targets(results[-1]),
        "two_workers": workers,
        "profile": {"clusters": sizes[-1], "queries": profile},
    }
