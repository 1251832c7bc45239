"""Where a fan-out server's time and memory go: fleetql in this process, under cProfile.

fleetql is built as ``fleetql serve`` builds it (settings from the same environment, the same app
and uvicorn config, uvloop) but runs in a thread of this process, because cProfile and
tracemalloc only see the process (cProfile: the thread) they run in. While the subscribers
connect, tracemalloc attributes the new memory to packages; during a burst, cProfile attributes
the server thread's CPU time to categories, and a ``gc`` callback times the collector (whose
time is also inside the profiled functions' own time). The profiler slows Python code about
twofold: read shares, not absolute times.

``python -m bench.fanout_profile [SUBSCRIBERS]`` (default 300) measures memory only
(``profile_memory``): RSS growth per subscriber, then KiB per subscriber by package, by line and
by allocating traceback, printed as JSON. It is how issue 5's per-subscriber memory was cut.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import pstats
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import uvicorn

from bench._support import Database, free_port
from bench.fanout_client import client_processes, collect_timeout, delivery_figures
from fleetql.app import create_app
from fleetql.config import load_settings
from fleetql.server import uvicorn_config

__all__ = ["memory_by_traceback", "profile_fleetql", "profile_memory", "threaded_fleetql"]

Burst = Callable[[], Awaitable[dict[str, float]]]

# Where a profiled function's own time is charged, by a fragment of "file:function"; first match.
# uvloop's transport.write is a Cython method, which cProfile does not see: its time (the socket
# write system call) is charged to its caller, uvicorn's websocket ``send``.
CATEGORIES = (
    ("permessage-deflate (zlib)", ("zlib", "permessage_deflate")),
    ("socket write (uvloop, inside uvicorn send)", ("websockets_sansio_impl.py:send",)),
    ("websocket framing (websockets)", ("/websockets/",)),
    ("ASGI send path (uvicorn, starlette)", ("/uvicorn/", "/starlette/")),
    ("JSON encoding", ("/json/", "encode_basestring", "c_make_encoder")),
    ("GraphQL execution (graphql-core)", ("/graphql/",)),
    ("strawberry (subscription loop, extensions, results)", ("/strawberry/",)),
    ("fleetql event bus", ("/fleetql/events/",)),
    ("fleetql types and fan-out (schema, resolvers)", ("/fleetql/schema/", "/fleetql/resolvers/")),
    ("database (asyncpg, SQLAlchemy)", ("asyncpg", "/sqlalchemy/")),
    ("asyncio scheduling", ("/asyncio/", "uvloop", "_asyncio")),
    ("Python built-ins (isinstance, getattr, …)", ("~:",)),
)


class _ProfiledServer(uvicorn.Server):
    """uvicorn's server, remembering its loop so the profiler can be switched on inside it."""

    loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)


class _CollectorClock:
    """A ``gc.callbacks`` entry: collections and the CPU time they took, by generation."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.seconds[info["generation"]] += time.thread_time() - self._started
            self.collections[info["generation"]] += 1


@asynccontextmanager
async def threaded_fleetql(
    database: Database, environment: dict[str, str]
) -> AsyncIterator[_ProfiledServer]:
    """fleetql on a free port, in a thread with its own (uvloop) event loop, until the end."""
    settings = load_settings(
        environ={
            "DATABASE_URL": database.url,
            "FLEETQL_ENCRYPTION_KEY": database.key.to_base64(),
            "FLEETQL_POLLER__ENABLED": "false",
            **environment,
        }
    )
    config = uvicorn_config(create_app(settings), settings, port=free_port(), log_level="warning")
    server = _ProfiledServer(config)
    thread = threading.Thread(target=server.run, name="bench.fanout.server", daemon=True)
    thread.start()
    try:
        async with asyncio.timeout(120):
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the profiled fleetql server did not start")
                await asyncio.sleep(0.05)
        yield server
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 60)


async def profile_fleetql(
    database: Database,
    *,
    environment: dict[str, str],
    query: str,
    subscribers: int,
    events: int,
    burst: Burst,
    folder: Path,
) -> dict[str, Any]:
    """Memory by package while ``subscribers`` connect; then one ``burst`` of ``events`` under
    cProfile, with the collector timed."""
    async with threaded_fleetql(database, environment) as server:
        assert server.loop is not None
        url = f"ws://127.0.0.1:{server.config.port}/graphql"
        # The server thread's CPU time, not wall time: on a busy machine wall time would charge
        # whatever ran when the thread was preempted (often a socket write waking a client).
        profiler, collector = cProfile.Profile(time.thread_time), _CollectorClock()
        tracemalloc.start()
        async with client_processes(
            url, query, subscribers=subscribers, events=events, folder=folder
        ) as clients:
            ready = (await clients.ready())["ready"]
            memory = memory_by_package(tracemalloc.take_snapshot(), ready)
            tracemalloc.stop()
            gc.callbacks.append(collector)
            await _on_loop(server.loop, profiler.enable)
            try:
                commits = await burst()
                outcome = await clients.collect(collect_timeout(subscribers, events))
            finally:
                await _on_loop(server.loop, profiler.disable)
                gc.callbacks.remove(collector)
    delivered = delivery_figures(commits, outcome, ready * events)["delivered"]
    summary = summarize_profile(profiler, delivered)
    return {
        "subscribers": ready,
        "events": events,
        **summary,
        "gc": {
            "collections_by_generation": collector.collections,
            "seconds": round(sum(collector.seconds), 3),
            "share": round(sum(collector.seconds) / max(summary["profiled_seconds"], 1e-9), 3),
        },
        "memory_kib_per_subscriber": memory,
    }


async def profile_memory(
    database: Database,
    *,
    environment: dict[str, str],
    query: str,
    subscribers: int,
    folder: Path,
    frames: int = 12,
    top: int = 60,
) -> dict[str, Any]:
    """Memory only, while ``subscribers`` connect: first untraced, by RSS (this process's
    growth: the clients are processes of their own); then, connecting again, traced by package
    (as ``profile_fleetql``), by line and by the tracebacks that allocated it, to find what
    each subscriber holds."""
    process = psutil.Process()
    async with threaded_fleetql(database, environment) as server:
        url = f"ws://127.0.0.1:{server.config.port}/graphql"
        gc.collect()
        rss_before = process.memory_info().rss
        async with client_processes(
            url, query, subscribers=subscribers, events=1, folder=folder
        ) as clients:
            untraced = (await clients.ready())["ready"]
            gc.collect()
            rss = (process.memory_info().rss - rss_before) / 1024 / max(1, untraced)
        tracemalloc.start(frames)
        try:
            async with client_processes(
                url, query, subscribers=subscribers, events=1, folder=folder
            ) as clients:
                ready = (await clients.ready())["ready"]
                gc.collect()
                snapshot = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    return {
        "subscribers": ready,
        "rss_kib_per_subscriber": round(rss, 1),
        "memory_kib_per_subscriber": memory_by_package(snapshot, ready),
        "lines": [
            {
                "bytes": round(statistic.size / max(1, ready)),
                "blocks": round(statistic.count / max(1, ready), 2),
                "at": _short(statistic.traceback[0].filename, statistic.traceback[0].lineno, ""),
            }
            for statistic in snapshot.statistics("lineno")[:top]
        ],
        "tracebacks": memory_by_traceback(snapshot, ready, top=top),
    }


def memory_by_traceback(
    snapshot: tracemalloc.Snapshot, subscribers: int, *, top: int = 25
) -> list[dict[str, Any]]:
    """The ``top`` allocating tracebacks, innermost frame first (a Traceback is oldest first):
    bytes and blocks per subscriber (a block count near a whole number is something each
    subscriber holds)."""
    rows = []
    for statistic in snapshot.statistics("traceback")[:top]:
        rows.append(
            {
                "bytes": round(statistic.size / max(1, subscribers)),
                "blocks": round(statistic.count / max(1, subscribers), 2),
                "at": [_short(f.filename, f.lineno, "") for f in reversed(statistic.traceback)][:8],
            }
        )
    return rows


async def _on_loop(loop: asyncio.AbstractEventLoop, action: Callable[[], None]) -> None:
    """Run ``action`` on the server's loop (a profiler only sees the thread that enabled it)."""

    async def call() -> None:
        action()

    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))


def memory_by_package(snapshot: tracemalloc.Snapshot, subscribers: int) -> dict[str, float]:
    """KiB per subscriber allocated since tracing started, by top-level package."""
    totals: dict[str, float] = {}
    for statistic in snapshot.statistics("filename"):
        name = _package(statistic.traceback[0].filename)
        totals[name] = totals.get(name, 0.0) + statistic.size
    ordered = sorted(totals.items(), key=lambda item: -item[1])
    per = {name: round(size / 1024 / max(1, subscribers), 1) for name, size in ordered[:8]}
    per["other"] = round(sum(size for _, size in ordered[8:]) / 1024 / max(1, subscribers), 1)
    per["total"] = round(sum(totals.values()) / 1024 / max(1, subscribers), 1)
    return per


def _package(filename: str) -> str:
    parts = Path(filename).parts
    if "site-packages" in parts:
        inner = parts[parts.index("site-packages") + 1 :]
        if inner[0] == "websockets" and len(inner) > 1 and inner[1] == "extensions":
            return "websockets permessage-deflate (zlib state)"
        return inner[0]
    if "fleetql" in parts:
        return "fleetql"
    if len(parts) < 2:
        return filename  # <frozen …>, <string>
    folder = parts[-2]
    return parts[-1].removesuffix(".py") if folder.startswith("python3") else folder


def summarize_profile(profiler: cProfile.Profile, delivered: int) -> dict[str, Any]:
    """Own time per category (share, and µs per delivery under the profiler), top functions."""
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values()) or 1e-9
    by_category: dict[str, float] = {}
    for (filename, _, function), entry in stats.items():
        name = _category(f"{filename}:{function}")
        by_category[name] = by_category.get(name, 0.0) + entry[2]
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:10]
    return {
        "profiled_seconds": round(total, 3),
        "delivered": delivered,
        "categories": [
            {
                "category": name,
                "share": round(seconds / total, 3),
                "us_per_delivery": round(seconds * 1e6 / max(1, delivered), 1),
            }
            for name, seconds in sorted(by_category.items(), key=lambda item: -item[1])
        ],
        "top_functions": [
            {
                "function": _short(filename, line, function),
                "calls": entry[1],
                "own_seconds": round(entry[2], 3),
                "share": round(entry[2] / total, 3),
            }
            for (filename, line, function), entry in top
        ],
    }


def _category(where: str) -> str:
    for name, fragments in CATEGORIES:
        if any(fragment in where for fragment in fragments):
            return name
    if "/lib/python3" in where and "site-packages" not in where:
        return "standard library (typing, enum, copy, …)"
    return "other"


def _short(filename: str, line: int, function: str) -> str:
    if filename == "~":
        return function
    parts = Path(filename).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return f"{'/'.join(parts[-3:])}:{line}({function})"


async def _main(subscribers: int, query: str) -> None:
    import json
    import tempfile

    from bench._support import bench_database

    with tempfile.TemporaryDirectory(prefix="fleetql-fanout-") as scratch:
        async with bench_database("fleetql_fanout") as database:
            report = await profile_memory(
                database, environment={}, query=query, subscribers=subscribers, folder=Path(scratch)
            )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    import sys

    from bench.fanout import SUBSCRIPTION

    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 300, SUBSCRIPTION))
