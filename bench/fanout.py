"""Subscription fan-out: one ``fleetql serve`` holding thousands of console websockets.

Each subscriber is a websocket with one ``clusterStateChanged`` subscription (a console's
selection), held by client processes of their own (``bench.fanout_client``). A burst of state
changes is then committed to PostgreSQL by this process as a poller commits a check
(``record_check`` writes the state and logs the event in one transaction); the event log's
trigger wakes the server's relay at commit. The time from each commit to each subscriber's
receipt is the latency a console sees.

Each size runs twice: with ``clusterStateChanged`` (a message per change) and with
``clusterStatesChanged(windowMs: 100)`` (a message per window of changes), the same selection.

Floors measured in the same run: (a) a websocket server on the same uvicorn protocol that only
pushes the same bytes to the same sockets on the same schedule (``bench.fanout_floor``), with and
without permessage-deflate; (b) strawberry executing the selection for one event over an
in-memory delivery, which fleetql pays once per subscriber. A third run serves fleetql in this
process under cProfile and tracemalloc to show where its time and memory go
(``bench.fanout_profile``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import tempfile
import time
import timeit
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from strawberry.types import ExecutionResult

from bench._support import Database, bench_database, running_server
from bench.fanout_client import (
    SUBSCRIPTION_ID,
    client_processes,
    collect_timeout,
    delivery_figures,
    open_subscriber,
)
from bench.fanout_floor import measure_send_floor
from bench.fanout_profile import profile_fleetql
from bench.fanout_report import markdown
from fleetql.access import ANONYMOUS, Principal, Role
from fleetql.config import DatabaseSettings
from fleetql.db.clusters import get_clusters
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.db.events import events_by_id
from fleetql.db.models import ClusterStatus
from fleetql.db.states import record_check
from fleetql.events.bus import Delivery
from fleetql.schema import build_schema

__all__ = ["markdown", "run"]

SELECTION = (
    "{ kind clusterId previousStatus status changedFields at"
    " cluster { id name status nodeCount readyNodeCount kubernetesVersion"
    " lastError { code message } } }"
)
SUBSCRIPTION = f"subscription {{ clusterStateChanged {SELECTION} }}"
# The same selection coalesced: one message per window of changes (clusterStatesChanged).
WINDOW_MS = 100
COALESCED = f"subscription {{ clusterStatesChanged(windowMs: {WINDOW_MS}) {SELECTION} }}"
EVENTS = 100
PROFILE_EVENTS = 20
EXECUTION_SAMPLES = 2000
EXECUTION_BATCHES = 5
RETENTION_SAMPLES = 500
# The floor without permessage-deflate, at one size both modes run: a frame costs the same at
# 1,000 sockets as at 5,000, and the larger run would add most of a minute.
PLAIN_FLOOR_AT = 1000
# The default events.url (memory://): one server, whose relay reads the event log when the log's
# trigger NOTIFYs at commit, so changes committed by this process arrive as a poller's would.
SERVER_ENV: dict[str, str] = {}

NODES = 12
# The poller's default poller.max_concurrency: a fleet-wide change commits this many at a time.
CHECKS_IN_FLIGHT = 10
CURRENT_STATUSES = "SELECT cluster_id, status FROM cluster_states WHERE cluster_id = ANY(:ids)"
SEED_FLEET = """
WITH new AS (
    INSERT INTO clusters (name, api_server_url, labels)
    SELECT 'fanout-' || lpad(i::text, 3, '0'),
           'https://10.0.0.' || i || '\\:6443',
           '{"env": "bench"}'
    FROM generate_series(1, :size) AS i
    RETURNING id
)
INSERT INTO cluster_states (cluster_id, status, node_count, ready_node_count, kubernetes_version)
SELECT id, 'HEALTHY', 12, 12, 'v1.28.7' FROM new
"""


async def run(quick: bool) -> dict[str, Any]:
    if quick:
        return await measure(sizes=(200, 1000), profiled=200)
    return await measure(sizes=(1000, 5000), profiled=500)


async def measure(*, sizes: Sequence[int], profiled: int) -> dict[str, Any]:
    """Each size against fleetql and the send floor (also plain at ``PLAIN_FLOOR_AT``
    subscribers), the execution floor, and a profile with ``profiled`` subscribers."""
    phases: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    execution: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fleetql-fanout-") as scratch:
        folder = Path(scratch)
        async with bench_database("fleetql_fanout") as database, writer(database) as sessions:
            for subscribers in sizes:
                with _timed(phases, f"fleetql {subscribers}"):
                    served, commits = await measure_fleetql(database, sessions, subscribers, folder)
                with _timed(phases, f"fleetql coalesced {subscribers}"):
                    coalesced, _ = await measure_fleetql(
                        database, sessions, subscribers, folder, query=COALESCED
                    )
                execution = execution or await measure_execution(sessions)
                row = {
                    "subscribers": subscribers,
                    "fleetql": served,
                    "fleetql_coalesced": coalesced,
                }
                for compression in (True, False) if subscribers == PLAIN_FLOOR_AT else (True,):
                    key = "send_floor" if compression else "send_floor_plain"
                    with _timed(phases, f"{key} {subscribers}"):
                        row[key] = await measure_send_floor(
                            commits,
                            execution["message"],
                            query=SUBSCRIPTION,
                            subscribers=subscribers,
                            folder=folder,
                            compression=compression,
                        )
                rows.append(row)
            ids = (await seed_fleet(sessions, EVENTS))[:PROFILE_EVENTS]
            with _timed(phases, "profile"):
                profile = await profile_fleetql(
                    database,
                    environment=SERVER_ENV,
                    query=SUBSCRIPTION,
                    subscribers=profiled,
                    events=len(ids),
                    burst=lambda: commit_burst(sessions, ids),
                    folder=folder,
                )
    del execution["message"]
    return {
        "events": EVENTS,
        "checks_in_flight": CHECKS_IN_FLIGHT,
        "subscription": SUBSCRIPTION,
        "coalesced_subscription": COALESCED,
        "window_ms": WINDOW_MS,
        "execution_floor": execution,
        "runs": rows,
        "profile": profile,
        "phase_seconds": phases,
    }


@contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Where the benchmark's own minutes go, so the run can be kept within its budget."""
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = round(time.monotonic() - started, 1)


# --- the database side: a fleet, and bursts of committed changes --------------------------------


@asynccontextmanager
async def writer(database: Database) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """This process's sessions on the bench database, for seeding and committing changes."""
    engine = create_engine(database.url, DatabaseSettings())
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


async def seed_fleet(sessions: async_sessionmaker[AsyncSession], size: int) -> list[uuid.UUID]:
    """``size`` healthy clusters (once per database; no events logged); ids in name order."""
    async with sessions() as session:
        if not await session.scalar(text("SELECT count(*) FROM clusters")):
            await session.execute(text(SEED_FLEET), {"size": size, "nodes": NODES})
            await session.commit()
        query = text("SELECT id FROM clusters ORDER BY name LIMIT :size")
        return list(await session.scalars(query, {"size": size}))


async def commit_burst(
    sessions: async_sessionmaker[AsyncSession], ids: Sequence[uuid.UUID]
) -> dict[str, float]:
    """Flip each cluster between HEALTHY and DEGRADED as a poller's check would, one transaction
    each, ``CHECKS_IN_FLIGHT`` at a time as the poller runs them; return each change's commit
    time (when COMMIT returned) by cluster id."""
    async with sessions() as session:
        found = await session.execute(text(CURRENT_STATUSES), {"ids": list(ids)})
        statuses = dict(found.tuples().all())
    commits: dict[str, float] = {}
    slots = asyncio.Semaphore(CHECKS_IN_FLIGHT)

    async def flip(cluster_id: uuid.UUID) -> None:
        degrade = statuses[cluster_id] == ClusterStatus.HEALTHY
        values = {
            "status": ClusterStatus.DEGRADED if degrade else ClusterStatus.HEALTHY,
            "ready_node_count": NODES - 1 if degrade else NODES,
        }
        async with slots, sessions() as session:
            change = await record_check(
                session, cluster_id, values, next_check_in=timedelta(minutes=5), heartbeat=True
            )
            await session.commit()
            commits[str(cluster_id)] = time.time()
        if change is None:
            raise RuntimeError(f"flipping cluster {cluster_id} changed nothing")

    await asyncio.gather(*(flip(cluster_id) for cluster_id in ids))
    return commits


# --- fleetql --------------------------------------------------------------------------------------


async def measure_fleetql(
    database: Database,
    sessions: async_sessionmaker[AsyncSession],
    subscribers: int,
    folder: Path,
    *,
    query: str = SUBSCRIPTION,
) -> tuple[dict[str, Any], dict[str, float]]:
    """One fresh ``fleetql serve``: memory before and with subscribers (each subscribed with
    ``query``), one burst's deliveries. Also returns the commit times, so the floor can replay
    the same schedule."""
    with running_server(database, env=SERVER_ENV) as server:
        ids = await seed_fleet(sessions, EVENTS)
        await warm_up(server.ws_url, query)
        process = psutil.Process(server.pid)
        rss_before = server.rss_bytes()
        async with client_processes(
            server.ws_url, query, subscribers=subscribers, events=EVENTS, folder=folder
        ) as clients:
            ready = await clients.ready()
            await asyncio.sleep(0.5)  # the last handshakes' garbage goes before measuring
            rss_with, fds = server.rss_bytes(), process.num_fds()
            cpu_before, client_cpu_before = server.cpu_seconds(), clients.cpu_seconds()
            commits = await commit_burst(sessions, ids)
            outcome = await clients.collect(collect_timeout(subscribers, EVENTS))
            cpu = server.cpu_seconds() - cpu_before
            client_cpu = clients.cpu_seconds() - client_cpu_before
            rss_after = server.rss_bytes()
        fd_limit = process.rlimit(psutil.RLIMIT_NOFILE)[0]
    figures = delivery_figures(commits, outcome, ready["ready"] * EVENTS)
    served = {
        **ready,
        **figures,
        "commit_span_ms": round((max(commits.values()) - min(commits.values())) * 1000, 1),
        "server_cpu_seconds": round(cpu, 3),
        "server_cpu_us_per_delivery": _per(cpu * 1e6, figures["delivered"]),
        "client_cpu_seconds": round(client_cpu, 3),
        "rss_before_mib": _mib(rss_before),
        "rss_with_subscribers_mib": _mib(rss_with),
        "rss_after_burst_mib": _mib(rss_after),
        "kib_per_subscriber": _per((rss_with - rss_before) / 1024, ready["ready"]),
        "server_fds": fds,
        "server_fd_limit": fd_limit,
        "client_fd_limit": outcome["client_fd_limit"],
        "closed_by_server": outcome["closes"],
    }
    return served, commits


async def warm_up(url: str, query: str = SUBSCRIPTION) -> None:
    """One subscriber, once, so that lazy imports and caches are not counted per subscriber."""
    connection = await open_subscriber(url, query)
    await connection.close()


# --- floor (b): executing the selection for one event ---------------------------------------------


@dataclass
class _Feed:
    """Stands in for the event bus: the one subscription the resolver registers reads this
    queue, so the timed loop is strawberry's per-event work and nothing else."""

    queue: asyncio.Queue[Delivery]
    registered: asyncio.Event

    def subscribe(self, accepts: Any, **options: Any) -> _Feed:
        self.registered.set()
        return self

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> Delivery:
        return await self.queue.get()

    async def aclose(self) -> None:
        pass


@dataclass
class _Services:
    events: _Feed


@dataclass
class _Context:
    """What the subscribe path reads of fleetql's Context; no database behind it."""

    services: _Services
    request_id: str = "bench"
    close_connection: Any = None
    # Who calls when authentication is off: an unscoped admin, as ``fleetql serve`` has it.
    principal: Principal = ANONYMOUS

    def scope(self, role: Role = Role.VIEWER) -> Any:
        return self.principal.scope(role)


async def measure_execution(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """Microseconds for strawberry to turn one delivery (the last logged event and its cluster,
    as the bus loads them) into a result of the console's selection, extensions and
    ``from_delivery`` included; to encode it as the ``next`` message; and the bytes each event
    leaves allocated in the subscription after a full collection."""
    feed = _Feed(asyncio.Queue(), asyncio.Event())
    context = _Context(_Services(feed))
    stream: Any = await build_schema().subscribe(SUBSCRIPTION, context_value=context)
    first = asyncio.ensure_future(anext(stream))
    await asyncio.wait_for(feed.registered.wait(), 10)
    delivery = await _last_delivery(sessions)
    for _ in range(EXECUTION_SAMPLES + RETENTION_SAMPLES + 1):
        feed.queue.put_nowait(delivery)
    result: ExecutionResult = await first
    # The best of several batches: this machine is shared, and a batch that another job
    # interrupted says nothing about strawberry.
    batches = []
    for _ in range(EXECUTION_BATCHES):
        started = time.perf_counter()
        for _ in range(EXECUTION_SAMPLES // EXECUTION_BATCHES):
            result = await anext(stream)
        batches.append((time.perf_counter() - started) / (EXECUTION_SAMPLES // EXECUTION_BATCHES))
    executing = min(batches)
    assert not result.errors, result.errors
    retained = await _retained_per_event(stream)
    await stream.aclose()
    message = {"id": SUBSCRIPTION_ID, "type": "next", "payload": {"data": result.data}}
    encoding = (
        min(timeit.repeat(lambda: json.dumps(message, separators=(",", ":")), number=200, repeat=5))
        / 200
    )
    return {
        "execute_us": round(executing * 1e6, 1),
        "encode_us": round(encoding * 1e6, 1),
        "retained_bytes_per_event": retained,
        "message": result.data,
    }


async def _retained_per_event(stream: Any) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(RETENTION_SAMPLES):
            await anext(stream)
        gc.collect()
        return round((tracemalloc.get_traced_memory()[0] - before) / RETENTION_SAMPLES)
    finally:
        tracemalloc.stop()


async def _last_delivery(sessions: async_sessionmaker[AsyncSession]) -> Delivery:
    async with sessions() as session:
        last = await session.scalar(text("SELECT max(id) FROM cluster_events"))
        event = (await events_by_id(session, [last]))[last]
        clusters = await get_clusters(session, [event.cluster_id])
    return Delivery(event, clusters.get(event.cluster_id))


def _mib(size: float) -> float:
    return round(size / 2**20, 1)


def _per(amount: float, count: int) -> float:
    return round(amount / count, 1) if count else 0.0
