"""Driving requests at the server: from another process to measure, in this one to explain.

Measuring: ``LoadGenerator`` keeps one ``python -m bench.loadgen`` child alive and hands it jobs
one JSON line at a time; the child (aiohttp on uvloop, keep-alive connections, closed loop) sends
them and answers with its latencies. The client therefore never shares the server's process, and
``CpuMeter`` reads the CPU of the server, PostgreSQL, the client and the rest of the (shared)
machine around each job.

Explaining: ``profile_in_process`` runs the same requests through the ASGI app in this process
under cProfile, leaves out the event loop's waits for sockets (PostgreSQL's time, not ours), and
sums the rest by layer: GraphQL, SQLAlchemy, asyncpg, HTTP framework, fleetql, event loop.
"""

from __future__ import annotations

import asyncio
import cProfile
import itertools
import json
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from fleetql.config import Settings

__all__ = [
    "CpuMeter",
    "Job",
    "JobResult",
    "LoadGenerator",
    "Profile",
    "in_process_settings",
    "load_generator",
    "profile_in_process",
]

ROOT = Path(__file__).resolve().parent.parent
_LINE_LIMIT = 1 << 27  # one result line carries every latency of a job


@dataclass(frozen=True)
class Job:
    """Requests to send: ``bodies`` (JSON text) in turn by ``concurrency`` clients.

    With a ``duration`` clients cycle through the bodies for ``warmup`` seconds unrecorded, then
    for ``duration`` seconds recorded; without one each body is sent exactly once (imports).
    Clients are spread over ``urls`` round-robin (several server processes).
    """

    urls: list[str]
    bodies: list[str]
    concurrency: int
    duration: float | None = None
    warmup: float = 0.0
    must_contain: str = '"data"'


@dataclass(frozen=True)
class JobResult:
    """What the client saw: one latency per recorded request, in seconds."""

    latencies: list[float]
    elapsed: float
    completed: int  # every answered request, warm-up included (to share out CPU readings)
    errors: int
    first_error: str | None
    client_cpu_seconds: float

    @property
    def rate(self) -> float:
        """Completed requests per second over the recorded window."""
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0


class LoadGenerator:
    """The parent's handle on one load-generator child process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    async def run(self, job: Job) -> JobResult:
        """Send ``job`` to the child and wait for its result; errors in responses raise."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(asdict(job)).encode() + b"\n")
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        if not line:
            raise RuntimeError("the load generator exited; its stderr says why")
        result = JobResult(**json.loads(line))
        if result.errors:
            raise RuntimeError(f"{result.errors} requests failed; first: {result.first_error}")
        return result


@asynccontextmanager
async def load_generator() -> AsyncIterator[LoadGenerator]:
    """Start the child; closing its stdin ends it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        limit=_LINE_LIMIT,
    )
    try:
        yield LoadGenerator(process)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass(frozen=True)
class CpuSeconds:
    """CPU spent during one job, in seconds, by whom. ``others`` is what the rest of the machine
    used meanwhile (this machine is shared): when it is high, the figures beside it are low."""

    wall: float
    server: float
    postgres: float
    client: float
    others: float


class CpuMeter:
    """Reads the CPU of the server process(es), the load generator, every PostgreSQL process and
    the whole machine around a job.

    PostgreSQL's processes are the children of the postmaster, found as the parent of one of our
    own backends; a backend that exits during a job takes its last figures with it (the server's
    pooled connections stay open, so that does not happen in practice).
    """

    def __init__(self, servers: Sequence[int], client: int, postmaster: int) -> None:
        self._servers = [psutil.Process(pid) for pid in servers]
        self._client = psutil.Process(client)
        self._postmaster = psutil.Process(postmaster)

    @classmethod
    async def attach(cls, servers: Sequence[int], load: LoadGenerator, connection: Any) -> CpuMeter:
        """``connection``: any asyncpg connection to the servers' PostgreSQL."""
        backend = await connection.fetchval("SELECT pg_backend_pid()")
        return cls(servers, load.pid, psutil.Process(backend).ppid())

    def _postgres(self) -> dict[int, float]:
        seconds: dict[int, float] = {}
        for process in [self._postmaster, *self._postmaster.children()]:
            try:
                seconds[process.pid] = _cpu(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return seconds

    def _read(self) -> _Reading:
        machine = psutil.cpu_times()
        return _Reading(
            wall=time.monotonic(),
            busy=sum(getattr(machine, name, 0.0) for name in _BUSY),
            server=sum(_cpu(server) for server in self._servers),
            client=_cpu(self._client) + _cpu(psutil.Process()),
            postgres=self._postgres(),
        )

    @asynccontextmanager
    async def measuring(self) -> AsyncIterator[list[CpuSeconds]]:
        """Yields a list that holds one ``CpuSeconds`` once the block has finished."""
        found: list[CpuSeconds] = []
        before = self._read()
        yield found
        after = self._read()
        postgres = sum(
            seconds - before.postgres.get(pid, 0.0) for pid, seconds in after.postgres.items()
        )
        server, client = after.server - before.server, after.client - before.client
        found.append(
            CpuSeconds(
                wall=after.wall - before.wall,
                server=server,
                postgres=postgres,
                client=client,
                others=max(0.0, after.busy - before.busy - server - client - postgres),
            )
        )


# Guest time is already inside user time; idle and iowait are not work.
_BUSY = ("user", "nice", "system", "irq", "softirq", "steal")


@dataclass(frozen=True)
class _Reading:
    wall: float
    busy: float  # the whole machine
    server: float
    client: float  # the load generator and this process
    postgres: dict[int, float]


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def in_process_settings(url: str, key_base64: str) -> Settings:
    """Settings for fleetql code run inside the benchmark, as ``running_server`` configures it."""
    from fleetql.config import load_settings

    return load_settings(
        environ={},
        overrides={
            "database": {"url": url},
            "encryption": {"key": key_base64},
            "poller": {"enabled": False},
            "server": {"log_level": "warning"},
        },
    )


# --- the child ------------------------------------------------------------------------------


class _Recorder:
    """Shared by a job's clients: which body comes next, what was seen, when to stop."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.bodies: Iterator[bytes] = (
            itertools.cycle([body.encode() for body in job.bodies])
            if job.duration is not None
            else iter([body.encode() for body in job.bodies])
        )
        self.record_from = 0.0
        self.stop_at = float("inf")
        self.latencies: list[float] = []
        self.last_done = 0.0
        self.completed = 0
        self.errors = 0
        self.first_error: str | None = None

    def failed(self, status: int, text: bytes) -> bool:
        return status != 200 or b'"errors"' in text or self.job.must_contain.encode() not in text

    def note_error(self, status: int, text: bytes) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"HTTP {status}: {text[:300].decode(errors='replace')}"


async def _client(session: Any, url: str, recorder: _Recorder) -> None:
    headers = {"content-type": "application/json"}
    for body in recorder.bodies:
        started = time.perf_counter()
        if started >= recorder.stop_at:
            return
        async with session.post(url, data=body, headers=headers) as response:
            text = await response.read()
            status = response.status
        done = time.perf_counter()
        recorder.completed += 1
        if recorder.failed(status, text):
            recorder.note_error(status, text)
        elif started >= recorder.record_from:
            recorder.latencies.append(done - started)
            recorder.last_done = max(recorder.last_done, done)


async def _run_job(job: Job) -> JobResult:
    import aiohttp  # the parent never needs it

    recorder = _Recorder(job)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    cpu_before = time.process_time()
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        started = time.perf_counter()
        recorder.record_from = started + job.warmup
        if job.duration is not None:
            recorder.stop_at = recorder.record_from + job.duration
        await asyncio.gather(
            *(
                _client(session, job.urls[index % len(job.urls)], recorder)
                for index in range(job.concurrency)
            )
        )
    return JobResult(
        latencies=recorder.latencies,
        elapsed=max(0.0, recorder.last_done - recorder.record_from),
        completed=recorder.completed,
        errors=recorder.errors,
        first_error=recorder.first_error,
        client_cpu_seconds=time.process_time() - cpu_before,
    )


def main() -> None:
    """One job per stdin line, one result per stdout line, until stdin closes."""
    import uvloop

    for line in sys.stdin:
        job = Job(**json.loads(line))
        result = uvloop.run(_run_job(job))
        sys.stdout.write(json.dumps(asdict(result)) + "\n")
        sys.stdout.flush()


# --- profiling in process -------------------------------------------------------------------

# Where a frame's file lives → the layer its CPU time is charged to.
_LAYERS = {
    "strawberry": "GraphQL (strawberry, graphql-core)",
    "graphql": "GraphQL (strawberry, graphql-core)",
    "sqlalchemy": "SQLAlchemy",
    "asyncpg": "asyncpg",
    "starlette": "HTTP (starlette, middleware)",
    "yaml": "YAML (PyYAML)",
    "cryptography": "cryptography",
    "httpx": "client",
    "httpcore": "client",
    "anyio": "client",
    "h11": "client",
    "sniffio": "client",
}


_WAITING = "waiting for I/O"
_IDLE_CALLS = ("<method 'poll' of 'select.epoll' objects>", "<built-in method select.select>")


@dataclass(frozen=True)
class Profile:
    """Shares of the server code's CPU time by layer (percent), and the costliest functions.

    cProfile slows call-heavy code several-fold, so its absolute figures are not the server's;
    the shares are what to read (scale them by a CPU time measured without a profiler).
    """

    requests: int
    profiled_ms_per_request: float
    layers_percent: dict[str, float]
    top_functions_percent: list[tuple[str, float]]


def _layer(filename: str) -> str:
    if "site-packages/" in filename:
        package = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        package = package.removesuffix(".py").split(".")[0]
        return _LAYERS.get(package, package)
    if "/fleetql/" in filename:
        return "fleetql"
    if "/bench/" in filename:
        return "client"
    if "/asyncio/" in filename or filename.endswith("selectors.py"):
        return "event loop (asyncio)"
    return "stdlib"


def _synthetic(filename: str) -> bool:
    # C functions ("~") and generated code ("<string>": namedtuple and dataclass methods;
    # "<frozen importlib...>") belong to whoever called them.
    return filename == "~" or filename.startswith("<")


def _owner(key: Any, stats: dict[Any, Any], depth: int = 0) -> str:
    """The layer of a function; a synthetic one takes its busiest caller's, up the stack."""
    filename = key[0]
    if not _synthetic(filename):
        return _layer(filename)
    callers: dict[Any, Any] = stats[key][4]
    if not callers or depth > 8:
        return "stdlib"
    busiest = max(callers, key=lambda caller: callers[caller][2])
    return _owner(busiest, stats, depth + 1)


def _charge(stats: dict[Any, Any]) -> dict[str, float]:
    """Self time by layer; a synthetic function's time goes to the layers of its callers, except
    the event loop's wait for sockets, which is not CPU."""
    layers: dict[str, float] = defaultdict(float)
    for key, (_cc, _nc, self_time, _cum, callers) in stats.items():
        if key[2] in _IDLE_CALLS:
            layers[_WAITING] += self_time
        elif not _synthetic(key[0]) or not callers:
            layers[_owner(key, stats)] += self_time
        else:
            for caller, edge in callers.items():
                layers[_owner(caller, stats)] += edge[2]
    return layers


def _top_functions(stats: dict[Any, Any], count: int) -> list[tuple[str, float]]:
    rows = [
        (f"{Path(filename).name}:{line}({name})", entry[2])
        for (filename, line, name), entry in stats.items()
        if _owner((filename, line, name), stats) != "client" and name not in _IDLE_CALLS
    ]
    rows.sort(key=lambda row: row[1], reverse=True)
    return rows[:count]


async def profile_in_process(
    app: Any,
    bodies: Sequence[str],
    *,
    requests: int,
    warmup: int = 20,
    seconds: float = float("inf"),
) -> Profile:
    """POST ``bodies`` (cycled) to ``app`` one at a time under cProfile, ``requests`` of them or
    as many as ``seconds`` allow (at least 10); share out the time the server's code took.

    The app's lifespan must already be running. uvicorn's HTTP parsing is not in this path
    (httpx's ASGI transport calls the app directly); the client's own frames are left out, and
    so is the time the event loop waits for PostgreSQL.
    """
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

        async def send(body: str) -> None:
            response = await client.post(
                "/graphql", content=body, headers={"content-type": "application/json"}
            )
            if response.status_code != 200 or "errors" in response.json():
                raise RuntimeError(f"profiled request failed: {response.text[:300]}")

        cycle = itertools.cycle(bodies)
        for _ in range(warmup):
            await send(next(cycle))
        profiler, sent = cProfile.Profile(), 0
        deadline = time.monotonic() + seconds
        profiler.enable()
        while sent < requests and (sent < 10 or time.monotonic() < deadline):
            await send(next(cycle))
            sent += 1
        profiler.disable()
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    layers = {
        name: seconds
        for name, seconds in _charge(stats).items()
        if name not in ("client", _WAITING)
    }
    total = sum(layers.values())

    def percent(seconds: float) -> float:
        return round(100 * seconds / total, 1)

    return Profile(
        requests=sent,
        profiled_ms_per_request=round(1000 * total / sent, 3),
        layers_percent={
            name: percent(seconds)
            for name, seconds in sorted(layers.items(), key=lambda item: -item[1])
            if percent(seconds) >= 0.5
        },
        top_functions_percent=[
            (name, percent(seconds)) for name, seconds in _top_functions(stats, 12)
        ],
    )


if __name__ == "__main__":
    main()
