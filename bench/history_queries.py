"""History queries at 10,000 and 100,000 clusters: the summary, the event log, and replay.

``fleetSummary`` (all clusters, and a label selector), pages of ``events`` (newest, the next one
by ``after``, one cluster's status changes) and one cluster's ``events`` + ``availability`` are
sent to ``fleetql serve`` from the list benchmark's load generator (another process) at 1 and 32
clients, beside their SQL floor: the statements fleetql runs for each, captured in this process
and replayed through one asyncpg connection. A websocket client then resumes ``clusterEvents``
1,000 and 10,000 events back and times the replay, beside a floor of the same rows fetched
through asyncpg and encoded as the same number of messages with orjson. EXPLAIN ANALYZE and
cProfile (of the HTTP queries in process, of a replay on a server thread) say where time goes.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import httpx
import orjson
from websockets.asyncio.client import connect

from bench._support import Database, bench_database, percentiles, running_servers
from bench.fanout_profile import summarize_profile, threaded_fleetql
from bench.history_queries_report import markdown
from bench.history_queries_seed import seed_events
from bench.list_queries import (
    SERVER_ENV,
    WORKERS,
    Bench,
    Statement,
    captured_statements,
    explain,
    in_memory_schema,
    measure_load,
    repeat_timed,
)
from bench.list_queries import Timing as ListTiming
from bench.list_queries_fleet import seed_fleet
from bench.loadgen import CpuMeter, LoadGenerator, in_process_settings, load_generator
from bench.loadgen import profile_in_process as profile_app
from fleetql.access import SYSTEM
from fleetql.app import create_app, open_services
from fleetql.db.models import EventType
from fleetql.resolvers import clusters, events, history
from fleetql.resolvers.context import Context
from fleetql.schema.inputs import ClusterFilter
from fleetql.schema.query import cluster_filter_of

__all__ = ["markdown", "run"]

SIZES = (10_000, 100_000)
QUICK_SIZES = (10_000,)
CONCURRENCY = (1, 32)
EVENTS_PER_CLUSTER = 20
EVENT_DAYS = 29  # inside the default 30-day retention: housekeeping must not prune mid-run
REPLAYS = (1_000, events.MAX_REPLAY)
SELECTOR = "env=prod,tier in (web,api)"


@dataclass(frozen=True)
class Timing:
    """How long each measurement runs; --quick keeps the benchmark near two minutes."""

    warmup: float
    duration: float
    floor_seconds: float
    profile_seconds: float  # cProfile per HTTP query, in process
    replays: int  # websocket replays timed per depth (the median is reported)


QUICK = Timing(warmup=0.3, duration=1.5, floor_seconds=0.5, profile_seconds=1.0, replays=3)
FULL = Timing(warmup=0.5, duration=4.0, floor_seconds=1.5, profile_seconds=3.0, replays=5)

# --- the HTTP queries ---------------------------------------------------------------------------

SUMMARY_FIELDS = (
    "clusters byStatus { status clusters } byMinorVersion { minorVersion clusters } nodes "
    "readyNodes cpuCapacityCores cpuAllocatableCores memoryCapacityBytes memoryAllocatableBytes "
    "credentialsExpiring"
)
EVENT_FIELDS = (
    "id type kind clusterId previousStatus status changedFields changes { field old new } "
    "message actor at"
)
PAGE_FIELDS = f"items {{ {EVENT_FIELDS} }} pageInfo {{ endCursor hasNextPage }}"


@dataclass(frozen=True)
class Targets:
    """What the queries of one size point at: a cluster, and the first page's cursor."""

    cluster_id: uuid.UUID
    after: str


Fetch = Callable[[Context, Targets], Awaitable[object]]


@dataclass(frozen=True)
class HistoryQuery:
    """A console's query, and the resolver calls that fetch the same data (for the floor)."""

    name: str
    title: str
    document: str
    fetch: Fetch
    variables: Callable[[Targets], dict[str, str]] = lambda _targets: {}

    def body(self, targets: Targets) -> str:
        return json.dumps({"query": self.document, "variables": self.variables(targets)})


async def _summary(context: Context, _targets: Targets) -> object:
    return await clusters.fleet_summary(context, where=cluster_filter_of(None))


async def _summary_selector(context: Context, _targets: Targets) -> object:
    where = cluster_filter_of(ClusterFilter(label_selector=SELECTOR))
    return await clusters.fleet_summary(context, where=where)


async def _newest(context: Context, _targets: Targets) -> object:
    return await history.list_events(context, first=50)


async def _next_page(context: Context, targets: Targets) -> object:
    return await history.list_events(context, first=50, after=targets.after)


async def _status_changes(context: Context, targets: Targets) -> object:
    return await history.list_events(
        context, cluster_ids=[str(targets.cluster_id)], types=[EventType.STATUS_CHANGED]
    )


async def _cluster_history(context: Context, targets: Targets) -> object:
    record = await clusters.get_cluster(context, targets.cluster_id)
    page = await history.list_events(context, cluster_ids=[str(targets.cluster_id)], first=20)
    figures = await history.cluster_availability(context, targets.cluster_id, window="7d")
    return record, page, figures


def _by_id(targets: Targets) -> dict[str, str]:
    return {"id": str(targets.cluster_id)}


QUERIES = (
    HistoryQuery("summary", "fleetSummary", f"{{ fleetSummary {{ {SUMMARY_FIELDS} }} }}", _summary),
    HistoryQuery(
        "summary_selector",
        f"fleetSummary, labelSelector {SELECTOR}",
        f'{{ fleetSummary(filter: {{labelSelector: "{SELECTOR}"}}) {{ {SUMMARY_FIELDS} }} }}',
        _summary_selector,
    ),
    HistoryQuery(
        "events_first", "events(first: 50)", f"{{ events(first: 50) {{ {PAGE_FIELDS} }} }}", _newest
    ),
    HistoryQuery(
        "events_next",
        "events(first: 50, after: cursor)",
        f"query Next($after: ID) {{ events(first: 50, after: $after) {{ {PAGE_FIELDS} }} }}",
        _next_page,
        lambda targets: {"after": targets.after},
    ),
    HistoryQuery(
        "events_cluster_status",
        "events(clusterIds: [id], types: [STATUS_CHANGED])",
        "query Changes($id: ID!) { events(filter: {clusterIds: [$id], types: [STATUS_CHANGED]})"
        f" {{ {PAGE_FIELDS} }} }}",
        _status_changes,
        _by_id,
    ),
    HistoryQuery(
        "cluster_history",
        'cluster(id) { events(first: 20), availability("7d") }',
        "query One($id: ID!) { cluster(id: $id) { id name status"
        f" events(first: 20) {{ {PAGE_FIELDS} }}"
        ' availability(window: "7d") { ratio healthySeconds transitions } } }',
        _cluster_history,
        _by_id,
    ),
)


def _signature(data: dict[str, Any]) -> Any:
    """What the server and the floor must agree on: the cluster count, or the event ids."""
    if "fleetSummary" in data:
        return data["fleetSummary"]["clusters"]
    page = data["events"] if "events" in data else data["cluster"]["events"]
    return [item["id"] for item in page["items"]]


def _fetched_signature(fetched: object) -> Any:
    if isinstance(fetched, history.HistoryPage):
        return [str(event.id) for event in fetched.events]
    if isinstance(fetched, tuple):
        return _fetched_signature(fetched[1])
    return getattr(fetched, "clusters", None)


async def _check_same_answer(url: str, body: str, fetched: object) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            url, content=body, headers={"content-type": "application/json"}
        )
    payload = response.json()
    if "errors" in payload or _signature(payload["data"]) != _fetched_signature(fetched):
        raise RuntimeError(f"floor and server disagree: {response.text[:300]}")


async def measure_query(bench: Bench, query: HistoryQuery, targets: Targets) -> dict[str, Any]:
    """The server at each concurrency, the SQL floor, the resolver in process, EXPLAIN."""
    with captured_statements() as statements:
        fetched = await query.fetch(bench.context, targets)
    body = query.body(targets)
    await _check_same_answer(bench.urls[0], body, fetched)
    server = {
        str(c): await measure_load(bench, body, c, urls=bench.urls, meter=bench.meter)
        for c in CONCURRENCY
    }

    async def replay_sql() -> None:
        for sql, parameters in statements:
            await bench.connection.fetch(sql, *parameters)

    async def resolve() -> None:
        await query.fetch(bench.context, targets)

    seconds = bench.timing.floor_seconds
    sql_floor = percentiles(await repeat_timed(replay_sql, seconds=seconds))
    resolver = percentiles(await repeat_timed(resolve, seconds=seconds))
    return {
        "server": server,
        "sql_floor": sql_floor,
        "resolver": resolver,
        "ratio": round(server["1"]["p50_ms"] / max(sql_floor["p50_ms"], 1e-3), 2),
        "statements": len(statements),
        "explain": [await explain(bench.connection, statement) for statement in statements],
    }


# --- replay over a websocket --------------------------------------------------------------------

SUBSCRIPTION = (
    "subscription Resume($after: ID) { clusterEvents(after: $after) {"
    " id type clusterId previousStatus status changedFields changes { field old new }"
    " message at } }"
)


async def replay_once(ws_url: str, after: int, expected: int) -> dict[str, float]:
    """Subscribe with ``after`` and time subscribe → the last replayed event, on one socket
    (graphql-transport-ws, no compression); every event must arrive, in order."""
    cpu_before = time.process_time()
    async with connect(
        ws_url,
        subprotocols=["graphql-transport-ws"],
        compression=None,
        ping_interval=None,  # type: ignore[list-item]
    ) as socket:
        await socket.send(orjson.dumps({"type": "connection_init", "payload": {}}).decode())
        ack = orjson.loads(await socket.recv())
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"no connection_ack: {ack}")
        subscribe = {
            "id": "1",
            "type": "subscribe",
            "payload": {"query": SUBSCRIPTION, "variables": {"after": str(after)}},
        }
        started = time.perf_counter()
        await socket.send(orjson.dumps(subscribe).decode())
        first_at, received, last_id = 0.0, 0, after
        async with asyncio.timeout(300):
            while received < expected:
                message = orjson.loads(await socket.recv())
                if message.get("type") != "next":
                    raise RuntimeError(f"replay interrupted: {str(message)[:300]}")
                payload = message["payload"]
                if payload.get("errors"):
                    raise RuntimeError(f"replay failed: {payload['errors']}")
                event_id = int(payload["data"]["clusterEvents"]["id"])
                if event_id != last_id + 1:
                    raise RuntimeError(f"replay out of order: {event_id} after {last_id}")
                last_id, received = event_id, received + 1
                if received == 1:
                    first_at = time.perf_counter()
        finished = time.perf_counter()
        await socket.send(orjson.dumps({"id": "1", "type": "complete"}).decode())
    return {
        "total_ms": (finished - started) * 1000,
        "first_event_ms": (first_at - started) * 1000,
        "client_cpu_ms": (time.process_time() - cpu_before) * 1000,
    }


def _message(row: asyncpg.Record) -> bytes:
    """One ``next`` message as the server sends it for SUBSCRIPTION, built from a log row."""
    changes = orjson.loads(row["changes"])
    event = {
        "id": str(row["id"]),
        "type": row["type"],
        "clusterId": str(row["cluster_id"]),
        "previousStatus": row["previous_status"],
        "status": row["status"],
        "changedFields": list(changes),
        "changes": [
            {"field": name, "old": old, "new": new} for name, (old, new) in changes.items()
        ],
        "message": row["message"],
        "at": row["at"].isoformat(),
    }
    return orjson.dumps({"id": "1", "type": "next", "payload": {"data": {"clusterEvents": event}}})


async def measure_replay(
    bench: Bench, timing: Timing, ws_url: str, depth: int, newest: int
) -> dict[str, Any]:
    """One depth: the websocket replay (median of several), the resolver's own work in process
    (log read + clusters loaded for the deliveries), the floor, and EXPLAIN of each statement."""
    after = newest - depth
    expected = int(
        await bench.connection.fetchval("SELECT count(*) FROM cluster_events WHERE id > $1", after)
    )
    await replay_once(ws_url, after, expected)  # warm the server's caches and pool
    runs = [await replay_once(ws_url, after, expected) for _ in range(timing.replays)]
    total = statistics.median(run["total_ms"] for run in runs)

    where = events.event_filter()
    with captured_statements() as statements:
        stream = await events.subscribe_cluster_events(bench.context, where, after=str(after))
        await stream.aclose()  # type: ignore[attr-defined]

    async def resolve() -> None:
        replay = await events.subscribe_cluster_events(bench.context, where, after=str(after))
        await replay.aclose()  # type: ignore[attr-defined]

    log_read = _log_statement(statements)

    async def floor() -> None:
        rows = await bench.connection.fetch(log_read[0], *log_read[1])
        for row in rows:
            _message(row)

    async def floor_sql() -> None:
        await bench.connection.fetch(log_read[0], *log_read[1])

    seconds = timing.floor_seconds
    floor_ms = percentiles(await repeat_timed(floor, seconds=seconds, at_least=5))["p50_ms"]
    sql_ms = percentiles(await repeat_timed(floor_sql, seconds=seconds, at_least=5))["p50_ms"]
    resolver_ms = percentiles(await repeat_timed(resolve, seconds=seconds, at_least=5))["p50_ms"]
    return {
        "after": after,
        "events": expected,
        "runs": [{key: round(value, 1) for key, value in run.items()} for run in runs],
        "total_ms": round(total, 1),
        "first_event_ms": round(statistics.median(run["first_event_ms"] for run in runs), 1),
        "events_per_second": round(expected / (total / 1000)),
        "client_cpu_ms": round(statistics.median(run["client_cpu_ms"] for run in runs), 1),
        "resolver_ms": resolver_ms,
        "floor_sql_ms": sql_ms,
        "floor_ms": floor_ms,
        "ratio": round(total / max(floor_ms, 1e-3), 1),
        "explain": [await explain(bench.connection, statement) for statement in statements],
    }


def _log_statement(statements: list[Statement]) -> Statement:
    """``publishable_events``: the one statement that reads the log after an id."""
    for sql, parameters in statements:
        if "FROM cluster_events" in sql and "cluster_events.id >" in sql:
            return sql, parameters
    raise RuntimeError("the replay did not read the event log")


# --- where the time goes ------------------------------------------------------------------------


async def profile_queries(database: Database, targets: Targets, seconds: float) -> dict[str, Any]:
    """The HTTP queries' server CPU by layer (cProfile, the same app in this process)."""
    app = create_app(in_process_settings(database.url, database.key.to_base64()), migrate=False)
    profiles = {}
    async with app.router.lifespan_context(app):
        for query in QUERIES:
            profile = await profile_app(
                app, [query.body(targets)], requests=10_000, warmup=5, seconds=seconds
            )
            profiles[query.name] = asdict(profile)
    return profiles


async def profile_replay(database: Database, after: int, expected: int) -> dict[str, Any]:
    """One replay from a fleetql server thread of this process under cProfile (thread CPU)."""
    async with threaded_fleetql(database, dict(SERVER_ENV)) as server:
        assert server.loop is not None
        url = f"ws://127.0.0.1:{server.config.port}/graphql"
        await replay_once(url, after, expected)
        profiler = cProfile.Profile(time.thread_time)
        await _on_loop(server.loop, profiler.enable)
        try:
            await replay_once(url, after, expected)
        finally:
            await _on_loop(server.loop, profiler.disable)
    summary = summarize_profile(profiler, expected)
    return {"events": expected, **summary}


async def profile_replay_resolver(context: Context, after: int, expected: int) -> dict[str, Any]:
    """The replay's first step alone (read the log, load the clusters, build the deliveries),
    in this process under cProfile: the time before the first event can be sent."""
    where = events.event_filter()
    warm = await events.subscribe_cluster_events(context, where, after=str(after))
    await warm.aclose()  # type: ignore[attr-defined]
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        stream = await events.subscribe_cluster_events(context, where, after=str(after))
    finally:
        profiler.disable()
    await stream.aclose()  # type: ignore[attr-defined]
    return {"events": expected, **summarize_profile(profiler, expected)}


async def _on_loop(loop: asyncio.AbstractEventLoop, action: Callable[[], None]) -> None:
    """Run ``action`` on the server thread's loop (a profiler sees the thread that enabled it)."""

    async def call() -> None:
        action()

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))


# --- one size, and the whole run ----------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What lives across sizes: the load generator, a connection, the in-process services."""

    load: LoadGenerator
    connection: asyncpg.Connection
    context: Context
    timing: Timing


async def measure_size(setup: Setup, database: Database, size: int, newest: int) -> dict[str, Any]:
    """Every query and both replay depths against a server started on the seeded log."""
    connection, timing = setup.connection, setup.timing
    cluster_id = await connection.fetchval(
        "SELECT id FROM clusters ORDER BY name OFFSET $1 LIMIT 1", size // 2
    )
    first_page = await history.list_events(setup.context, first=50)
    targets = Targets(cluster_id=cluster_id, after=str(first_page.events[-1].id))
    with running_servers(database, WORKERS, env=SERVER_ENV) as servers:
        server, pids = servers[0], [server.pid for server in servers]
        bench = Bench(
            urls=[server.url for server in servers],
            server_pids=pids,
            load=setup.load,
            meter=await CpuMeter.attach(pids, setup.load, connection),
            connection=connection,
            context=setup.context,
            schema=in_memory_schema(),  # unused here: the list benchmark's GraphQL floor
            timing=ListTiming(timing.warmup, timing.duration, timing.floor_seconds, 0),
        )
        queries = {}
        for query in QUERIES:
            queries[query.name] = await measure_query(bench, query, targets)
            print(f"  {size:,} clusters, {query.name}: {_summary(queries[query.name])}", flush=True)
        replays = {}
        for depth in REPLAYS:
            replay = await measure_replay(bench, timing, server.ws_url, depth, newest)
            replays[str(depth)] = replay
            print(
                f"  {size:,} clusters, replay {depth:,}: {replay['total_ms']} ms, "
                f"{replay['events_per_second']}/s, floor {replay['floor_ms']} ms",
                flush=True,
            )
    return {
        "clusters": size,
        "events": newest,
        "cluster_id": str(cluster_id),
        "after": targets.after,
        "queries": queries,
        "replays": replays,
    }


def _summary(result: dict[str, Any]) -> str:
    one, many = result["server"]["1"], result["server"]["32"]
    return (
        f"p50 {one['p50_ms']} ms, 32 clients {many['rps']}/s p99 {many['p99_ms']} ms, "
        f"SQL floor {result['sql_floor']['p50_ms']} ms"
    )


async def run(quick: bool) -> dict[str, Any]:
    """Seed each size (clusters by COPY, a month of events by SQL), start a server on it,
    measure; then profile at the largest size."""
    timing, sizes = (QUICK, QUICK_SIZES) if quick else (FULL, SIZES)
    results: list[dict[str, Any]] = []
    async with bench_database() as database:
        settings = in_process_settings(database.url, database.key.to_base64())
        connection = await asyncpg.connect(database.dsn)
        try:
            # Migrated here, not by the server: the server starts after each seeding, so that
            # its relay (memory://) starts from the newest event instead of replaying the seed.
            async with (
                load_generator() as load,
                open_services(settings, migrate=True, relay_events=False) as services,
            ):
                context = Context(services=services, request_id="bench-floor", principal=SYSTEM)
                setup = Setup(load=load, connection=connection, context=context, timing=timing)
                seeded = 0
                for size in sizes:
                    started = time.monotonic()
                    key_id = database.key.key_id
                    await seed_fleet(connection, start=seeded, stop=size, key_id=key_id)
                    seeded = size
                    newest = await seed_events(
                        connection, per_cluster=EVENTS_PER_CLUSTER, days=EVENT_DAYS
                    )
                    seed_seconds = round(time.monotonic() - started, 1)
                    print(f"  seeded {size:,} clusters, {newest:,} events in {seed_seconds} s")
                    measured = await measure_size(setup, database, size, newest)
                    results.append({**measured, "seed_s": seed_seconds})
                largest = results[-1]
                targets = Targets(uuid.UUID(largest["cluster_id"]), largest["after"])
                deepest = largest["replays"][str(max(REPLAYS))]
                resolver_profile = await profile_replay_resolver(
                    setup.context, deepest["after"], deepest["events"]
                )
                replay_profile = await profile_replay(database, deepest["after"], deepest["events"])
        finally:
            await connection.close()
        query_profiles = await profile_queries(database, targets, timing.profile_seconds)
    return {
        "titles": {query.name: query.title for query in QUERIES},
        "workers": WORKERS,
        "events_per_cluster": EVENTS_PER_CLUSTER,
        "event_days": EVENT_DAYS,
        "timing": asdict(timing),
        "sizes": results,
        "profile": {
            "clusters": sizes[-1],
            "queries": query_profiles,
            "replay": replay_profile,
            "replay_resolver": resolver_profile,
        },
    }
