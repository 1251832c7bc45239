"""What every benchmark needs: a database, a real server process, clocks and summaries.

Benchmarks measure processes as users run them: ``fleetql serve`` in a subprocess with its own
PostgreSQL, load from another process. Figures are reported beside a floor measured in the same
run, because this machine is shared and absolute numbers drift from run to run.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from fleetql.crypto import EncryptionKey
from fleetql.db.embedded import embedded_postgres

__all__ = [
    "FLEETQL",
    "Database",
    "ServerProcess",
    "bench_database",
    "free_port",
    "machine",
    "percentiles",
    "process_cpu_seconds",
    "running_http_floor",
    "running_server",
    "running_servers",
]

FLEETQL = str(Path(sys.executable).parent / "fleetql")


@dataclass(frozen=True)
class Database:
    url: str  # SQLAlchemy (postgresql+asyncpg://…)
    dsn: str  # asyncpg (postgresql://…)
    key: EncryptionKey  # the encryption key servers on this database must use


@asynccontextmanager
async def bench_database(name: str = "fleetql_bench") -> AsyncIterator[Database]:
    """A fresh embedded PostgreSQL in a scratch folder (outside /tmp/pytest-*), removed after.

    ``FLEETQL_BENCH_DATABASE_URL`` points at another server instead (it must be empty or
    disposable: benchmarks truncate it).
    """
    external = os.environ.get("FLEETQL_BENCH_DATABASE_URL")
    key = EncryptionKey.generate()
    if external:
        yield Database(url=external, dsn=_dsn(external), key=key)
        return
    folder = Path(tempfile.mkdtemp(prefix="fleetql-bench-"))
    try:
        async with embedded_postgres(folder / "pgdata", database=name) as url:
            yield Database(url=url, dsn=_dsn(url), key=key)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``fleetql serve``."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)


@contextmanager
def running_server(
    database: Database,
    *,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    startup_timeout: float = 120.0,
) -> Iterator[ServerProcess]:
    """Start ``fleetql serve`` on a free port against ``database``; stop it (SIGTERM) after.

    The poller is off unless ``env`` turns it on; logs go to a file printed on failure.
    """
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="fleetql-bench-server-", suffix=".log")[1])
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLEETQL_")}
    environment.pop("DATABASE_URL", None)
    environment |= {
        "DATABASE_URL": database.url,
        "FLEETQL_ENCRYPTION_KEY": database.key.to_base64(),
        "FLEETQL_POLLER__ENABLED": "false",
        "FLEETQL_SERVER__LOG_LEVEL": "warning",
        **(env or {}),
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [FLEETQL, "serve", "--port", str(port), *args],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, port, log)
    try:
        _wait_until_serving(server, startup_timeout)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.unlink(missing_ok=True)


@contextmanager
def running_servers(
    database: Database, count: int, *, env: dict[str, str] | None = None
) -> Iterator[list[ServerProcess]]:
    """``count`` ``fleetql serve`` processes on one database, as replicas behind a load
    balancer would run; stopped together after."""
    with ExitStack() as stack:
        yield [stack.enter_context(running_server(database, env=env)) for _ in range(count)]


@contextmanager
def running_http_floor(body: bytes, *, startup_timeout: float = 30.0) -> Iterator[str]:
    """``bench.http_floor`` answering every POST with ``body``; yields its URL."""
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix="fleetql-bench-floor-", suffix=".json") as file:
        file.write(body)
        file.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.http_floor", str(port), file.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/graphql"
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError("bench.http_floor exited")
                try:
                    httpx.post(url, content=b"{}", timeout=2)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("bench.http_floor did not answer in time") from None
                    time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_until_serving(server: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"fleetql serve exited:\n{server.log.read_text(errors='replace')}")
        try:
            response = httpx.post(server.url, json={"query": "{ __typename }"}, timeout=2)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("fleetql serve did not answer in time")
        time.sleep(0.2)


def process_cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of a process (optionally with its children) so far."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    total = times.user + times.system
    if children:
        total += times.children_user + times.children_system
    return float(total)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50, p99, max and mean of ``samples`` (seconds in, milliseconds out)."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
        return ordered[index] * 1000

    return {
        "count": len(ordered),
        "p50_ms": round(at(0.50), 3),
        "p99_ms": round(at(0.99), 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": commit + ("+dirty" if dirty else ""),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


async def gather_limited(limit: int, coroutines: Sequence[Any]) -> list[Any]:
    """Run coroutines at most ``limit`` at a time, keeping their order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Any) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))
