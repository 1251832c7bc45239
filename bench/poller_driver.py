"""One poller process of the poller benchmark: full sweeps of a simulated fleet, timed from inside.

``python -m bench.poller_driver --clusters N --concurrency C --sim-pid PID [--sweeps KIND ...]
[--profile] [--gc-threshold T] [--sample K]`` reads the database URL and the encryption key from
the environment (``BENCH_POLLER_DATABASE_URL``, ``BENCH_POLLER_KEY``: not argv, which any user
can read), builds a ``Poller`` and a ``ClientPool`` and settles the heap
(:func:`fleetql.poller.heap.settle_heap`) as ``fleetql poll`` does, and runs one full sweep
(every cluster due, each checked once) per kind:

- ``cold``: the pool is empty, so every check builds its ApiClient and handshakes TLS;
- ``warm``: right after, pooled clients and their kept-alive connections are reused;
- ``idle``: after aiohttp's keep-alive (15 s) has run out, as it always has between checks 5
  minutes apart: pooled clients, but a new TCP and TLS connection per check.

It prints one JSON line. The poller has the process to itself, so its CPU time and peak RSS are
the poller's alone; the simulator and PostgreSQL run in processes of their own (the simulator's
CPU is read beside, by pid).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import logging
import os
import resource
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bench.poller_profile import summarize_profile
from fleetql.config import DatabaseSettings, PollerSettings
from fleetql.crypto import EncryptionKey, KubeconfigCipher
from fleetql.db.engine import create_engine, create_session_factory
from fleetql.poller.heap import settle_heap
from fleetql.poller.pool import ClientPool
from fleetql.poller.worker import Poller

__all__ = [
    "DATABASE_URL_VARIABLE",
    "KEY_VARIABLE",
    "SWEEP_KINDS",
    "DriverOptions",
    "command",
    "drive",
]

SWEEP_KINDS = ("cold", "warm", "idle")
DATABASE_URL_VARIABLE = "BENCH_POLLER_DATABASE_URL"
KEY_VARIABLE = "BENCH_POLLER_KEY"
# aiohttp's TCPConnector closes a connection idle this long (kubernetes_asyncio keeps the default).
_KEEPALIVE_SECONDS = 15.0


class GcMeter:
    """CPU seconds spent in the cyclic garbage collector, and collections per generation.

    cProfile charges a collection to whichever frame allocated when it ran, so it is measured
    here instead: a JSON document under construction survives collections into the oldest
    generation, and full collections traverse the whole heap.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.process_time()
            return
        self.seconds += time.process_time() - self._started
        self.collections[info["generation"]] += 1


@dataclass(frozen=True)
class Sample:
    """The process's and the simulator's counters at one moment."""

    wall: float
    cpu_user: float
    cpu_system: float
    max_rss_kib: int
    sim_cpu: float
    gc_seconds: float
    gc_collections: tuple[int, ...]

    @classmethod
    def take(cls, sim: psutil.Process, meter: GcMeter) -> Sample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        sim_times = sim.cpu_times()
        return cls(
            wall=time.perf_counter(),
            cpu_user=usage.ru_utime,
            cpu_system=usage.ru_stime,
            max_rss_kib=usage.ru_maxrss,
            sim_cpu=sim_times.user + sim_times.system,
            gc_seconds=meter.seconds,
            gc_collections=tuple(meter.collections),
        )


async def mark_due(sessions: async_sessionmaker[AsyncSession], sample: int | None) -> datetime:
    """Make every cluster (or the first ``sample`` by id) due now; returns the database's "now",
    which every check's ``last_checked_at`` follows."""
    statement = "UPDATE cluster_states SET next_check_at = now()"
    if sample is not None:
        statement += (
            " WHERE cluster_id IN"
            " (SELECT cluster_id FROM cluster_states ORDER BY cluster_id LIMIT :sample)"
        )
    async with sessions() as session:
        await session.execute(text(statement), {"sample": sample})
        started: datetime = (await session.execute(text("SELECT now()"))).scalar_one()
        await session.commit()
    return started


async def count_checked(
    sessions: async_sessionmaker[AsyncSession], since: datetime
) -> tuple[int, int]:
    """How many clusters were checked since ``since``, and how many of those are HEALTHY."""
    query = text(
        "SELECT count(*), count(*) FILTER (WHERE status = 'HEALTHY')"
        " FROM cluster_states WHERE last_checked_at >= :since"
    )
    async with sessions() as session:
        row = (await session.execute(query, {"since": since})).one()
    return int(row[0]), int(row[1])


class HandshakeCounter:
    """TLS handshakes the pooled clients started, from OpenSSL's own counters.

    kubernetes_asyncio builds one ``ssl.create_default_context`` per ApiClient; wrapping that
    function keeps each context, and ``SSLContext.session_stats()["connect"]`` counts the client
    handshakes made with it. Whether a connection was reused, expired after aiohttp's keep-alive
    or never existed is then counted, not guessed.
    """

    def __init__(self) -> None:
        self._contexts: list[ssl.SSLContext] = []
        self._create = ssl.create_default_context

    def __enter__(self) -> HandshakeCounter:
        def create(*args: Any, **kwargs: Any) -> ssl.SSLContext:
            context = self._create(*args, **kwargs)
            self._contexts.append(context)
            return context

        ssl.create_default_context = create
        return self

    def __exit__(self, *exc: object) -> None:
        ssl.create_default_context = self._create

    @property
    def handshakes(self) -> int:
        return sum(context.session_stats()["connect"] for context in self._contexts)


async def timed_sweep(
    poller: Poller,
    kind: str,
    *,
    sim: psutil.Process,
    meter: GcMeter,
    tls: HandshakeCounter,
    profile: bool,
    sample: int | None,
) -> dict[str, Any]:
    """One full sweep, measured; its profile (CPU time by layer) when ``profile`` is set."""
    if kind == "idle":
        await asyncio.sleep(_KEEPALIVE_SECONDS + 1.5)
    since = await mark_due(poller.sessions, sample)
    handshakes = tls.handshakes
    failures, misses = poller.stats.failures, poller.pool.stats.misses
    gc.collect()
    tracked = len(gc.get_objects())
    profiler = cProfile.Profile(time.process_time) if profile else None
    before = Sample.take(sim, meter)
    if profiler is not None:
        profiler.enable()
    swept = await poller.sweep()
    if profiler is not None:
        profiler.disable()
    after = Sample.take(sim, meter)
    opened = tls.handshakes - handshakes
    checked, healthy = await count_checked(poller.sessions, since)
    result: dict[str, Any] = {
        "kind": kind,
        "swept": swept,
        "checked": checked,
        "healthy": healthy,
        "failures": poller.stats.failures - failures,
        "clients_built": poller.pool.stats.misses - misses,
        "tls_handshakes": opened,
        "wall_s": round(after.wall - before.wall, 4),
        "cpu_user_s": round(after.cpu_user - before.cpu_user, 4),
        "cpu_system_s": round(after.cpu_system - before.cpu_system, 4),
        "sim_cpu_s": round(after.sim_cpu - before.sim_cpu, 3),
        "peak_rss_mib": round(after.max_rss_kib / 1024, 1),
        "peak_in_flight": poller.stats.peak_in_flight,
        "gc_s": round(after.gc_seconds - before.gc_seconds, 4),
        "gc_collections": [
            b - a for a, b in zip(before.gc_collections, after.gc_collections, strict=True)
        ],
        "gc_tracked_objects_at_start": tracked,
    }
    if profiler is not None:
        result["profile"] = summarize_profile(profiler, checks=swept)
    return result


@dataclass(frozen=True)
class DriverOptions:
    """What one driver process does; ``gc_threshold`` sets the collector's first threshold
    after ``settle_heap`` (which raises it to 20,000 as ``fleetql poll`` does): 700, Python's
    default, is the what-if of a poller that does not tune its collector."""

    clusters: int
    concurrency: int
    kinds: tuple[str, ...]
    sim_pid: int
    profile: bool = False
    gc_threshold: int | None = None
    sample: int | None = None

    @property
    def due(self) -> int:
        return self.clusters if self.sample is None else min(self.sample, self.clusters)


async def drive(options: DriverOptions) -> dict[str, Any]:
    """Build the poller as ``fleetql poll`` would, with a pool that holds the whole fleet, and
    settle the heap as it does once started (``gc_threshold`` then overrides its threshold)."""
    url = os.environ[DATABASE_URL_VARIABLE]
    cipher = KubeconfigCipher(EncryptionKey.from_base64(os.environ[KEY_VARIABLE]))
    engine = create_engine(url, DatabaseSettings(url=url))
    settings = PollerSettings(
        max_concurrency=options.concurrency,
        client_timeout=timedelta(seconds=30),
        retry_attempts=0,
    )
    sim = psutil.Process(options.sim_pid)
    startup_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pool = ClientPool(max_clients=max(options.clusters, 1), idle_timeout=3600.0)
    try:
        with GcMeter() as meter, HandshakeCounter() as tls:
            async with pool:
                poller = Poller(
                    sessions=create_session_factory(engine),
                    cipher=cipher,
                    settings=settings,
                    pool=pool,
                )
                settle_heap()
                if options.gc_threshold is not None:
                    gc.set_threshold(options.gc_threshold)
                sweeps = [
                    await timed_sweep(
                        poller,
                        kind,
                        sim=sim,
                        meter=meter,
                        tls=tls,
                        profile=options.profile,
                        sample=options.sample,
                    )
                    for kind in options.kinds
                ]
    finally:
        await engine.dispose()
    return {
        "clusters": options.clusters,
        "concurrency": options.concurrency,
        "due": options.due,
        "gc_threshold": gc.get_threshold()[0],
        "startup_rss_mib": round(startup_rss_kib / 1024, 1),
        "sweeps": sweeps,
    }


def command(options: DriverOptions) -> list[str]:
    """The command line that runs ``options`` in a process of its own."""
    return [
        sys.executable,
        "-m",
        "bench.poller_driver",
        f"--clusters={options.clusters}",
        f"--concurrency={options.concurrency}",
        f"--sim-pid={options.sim_pid}",
        "--sweeps",
        *options.kinds,
        *(["--profile"] if options.profile else []),
        *([f"--gc-threshold={options.gc_threshold}"] if options.gc_threshold is not None else []),
        *([f"--sample={options.sample}"] if options.sample is not None else []),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poller_driver")
    parser.add_argument("--clusters", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--sim-pid", type=int, required=True)
    parser.add_argument("--sweeps", nargs="+", choices=SWEEP_KINDS, default=["cold", "warm"])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--gc-threshold", type=int, default=None)
    parser.add_argument("--sample", type=int, default=None, help="sweep only this many clusters")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    options = DriverOptions(
        clusters=args.clusters,
        concurrency=args.concurrency,
        kinds=tuple(args.sweeps),
        sim_pid=args.sim_pid,
        profile=args.profile,
        gc_threshold=args.gc_threshold,
        sample=args.sample,
    )
    result = asyncio.run(drive(options))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
