"""The fan-out benchmark's consoles: client processes holding many subscribed websockets.

``python -m bench.fanout_client URL COUNT EVENTS OUT QUERY [--no-compression]`` opens COUNT
websockets to URL and speaks graphql-transport-ws on each as a console does (connection_init,
connection_ack, subscribe QUERY), then proves the subscription is registered with a query on the
same socket (the server answers it only after it has read the subscribe). It prints one JSON line
``{"ready": …}``, timestamps every event that arrives (each event of a coalesced message with
the message's arrival) until each socket has EVENTS of them or a
line arrives on stdin, writes the receive times to OUT and prints ``{"done": …}``.

Clients live in processes of their own so that the server's CPU and memory are the server's
alone; receive times are wall-clock (``time.time()``), comparable with the commit times the
parent records on the same machine. ``client_processes`` is the parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench._support import percentiles

__all__ = [
    "SUBSCRIPTION_ID",
    "Clients",
    "client_processes",
    "delivery_figures",
    "open_subscriber",
]

PROTOCOL = "graphql-transport-ws"
SUBSCRIPTION_ID = "1"
PROCESSES = 2
_PROBE_ID = "2"
_PROBE = "{ __typename }"
ROOT = Path(__file__).resolve().parent.parent
# Handshakes in flight per process: thousands connect in seconds, and the server's accept backlog
# and its 3 s connection_init deadline are never what limits them.
_CONNECT_CONCURRENCY = 64
_SETUP_TIMEOUT = 60.0


# --- inside a client process --------------------------------------------------------------------


@dataclass
class Tally:
    """What this process saw: receive times per event (keyed by cluster id), and failures."""

    events: int
    sockets: int = 0
    received: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    complete_sockets: int = 0
    errors: int = 0
    messages: int = 0
    closes: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    all_complete: asyncio.Event = field(default_factory=asyncio.Event)


def raise_fd_limit() -> int:
    """Every websocket is a file descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def open_subscriber(url: str, query: str, *, compression: bool = True) -> ClientConnection:
    """Connect, initialise, subscribe, and wait until the server has registered the subscription.

    No client pings (browsers send none) and, by default, the permessage-deflate offer browsers
    make, so the server pays for compression as it does with real consoles.
    """
    connection = await connect(
        url,
        subprotocols=[PROTOCOL],  # type: ignore[list-item]
        ping_interval=None,
        open_timeout=_SETUP_TIMEOUT,
        compression="deflate" if compression else None,
    )
    try:
        await _send(connection, {"type": "connection_init", "payload": {}})
        await _expect(connection, "connection_ack", None)
        subscribe = {"id": SUBSCRIPTION_ID, "type": "subscribe", "payload": {"query": query}}
        await _send(connection, subscribe)
        await _send(
            connection, {"id": _PROBE_ID, "type": "subscribe", "payload": {"query": _PROBE}}
        )
        await _expect(connection, "complete", _PROBE_ID)
    except BaseException:
        connection.transport.abort()
        raise
    return connection


async def _send(connection: ClientConnection, message: dict[str, Any]) -> None:
    await connection.send(orjson.dumps(message).decode())


async def _expect(connection: ClientConnection, kind: str, operation_id: str | None) -> None:
    """Read until a message of ``kind`` for ``operation_id``; an early event would be a bug."""
    while True:
        message = orjson.loads(await connection.recv())
        if message.get("type") == kind and message.get("id") == operation_id:
            return
        if message.get("id") == SUBSCRIPTION_ID:
            raise RuntimeError(f"subscription answered before the burst: {message}")


async def _listen(connection: ClientConnection, tally: Tally) -> None:
    """Timestamp each message before parsing it: the parse is the client's cost, not latency."""
    seen = 0
    try:
        async for raw in connection:
            received = time.time()
            message = orjson.loads(raw)
            if message.get("id") != SUBSCRIPTION_ID or message.get("type") != "next":
                continue
            payload = message["payload"]
            if payload.get("errors"):
                tally.errors += 1
                continue
            tally.messages += 1
            # One event per message, or a coalesced list of them (clusterStatesChanged).
            (delivered,) = payload["data"].values()
            events = delivered if isinstance(delivered, list) else [delivered]
            for event in events:
                tally.received[event["clusterId"]].append(received)
            before, seen = seen, seen + len(events)
            if before < tally.events <= seen:
                tally.complete_sockets += 1
                if tally.complete_sockets == tally.sockets:
                    tally.all_complete.set()
    except ConnectionClosed as closed:
        tally.closes[str(closed.rcvd.code if closed.rcvd else "no close frame")] += 1


async def _connect_all(
    url: str, query: str, count: int, compression: bool
) -> tuple[list[ClientConnection], list[str]]:
    semaphore = asyncio.Semaphore(_CONNECT_CONCURRENCY)

    async def one() -> ClientConnection:
        async with semaphore:
            opening = open_subscriber(url, query, compression=compression)
            return await asyncio.wait_for(opening, _SETUP_TIMEOUT)

    outcomes = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    connections = [item for item in outcomes if isinstance(item, ClientConnection)]
    failures = [
        f"{type(item).__name__}: {item}" for item in outcomes if isinstance(item, BaseException)
    ]
    return connections, failures


async def _wait_for_collect() -> None:
    """Return when the parent writes a line (or closes our stdin)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


async def main(arguments: argparse.Namespace) -> None:
    fd_limit = raise_fd_limit()
    tally = Tally(events=arguments.events)
    connections, failures = await _connect_all(
        arguments.url, arguments.query, arguments.count, not arguments.no_compression
    )
    tally.sockets = len(connections)
    _emit({"ready": len(connections), "failed": len(failures), "first_failure": failures[:1]})
    async with asyncio.TaskGroup() as group:
        listeners = [group.create_task(_listen(c, tally)) for c in connections]
        waiters = [
            group.create_task(tally.all_complete.wait()),
            group.create_task(_wait_for_collect()),
        ]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        report = {
            "complete_sockets": tally.complete_sockets,
            "errors": tally.errors,
            "messages": tally.messages,
            "closes": dict(tally.closes),
            "fd_limit": fd_limit,
            "received": tally.received,
        }
        await asyncio.to_thread(arguments.out.write_bytes, orjson.dumps(report))
        _emit({"done": tally.complete_sockets})
        # Drop the sockets at once: a polite close handshake with thousands of peers would make
        # the server's teardown part of what the parent may still be timing.
        for connection in connections:
            connection.transport.abort()
        for task in (*listeners, *waiters):
            task.cancel()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_client")
    parser.add_argument("url")
    parser.add_argument("count", type=int)
    parser.add_argument("events", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("query")
    parser.add_argument("--no-compression", action="store_true")
    return parser.parse_args(argv)


# --- the parent's side ----------------------------------------------------------------------------


@dataclass
class Clients:
    """The client processes of one run and the files they report into."""

    processes: list[asyncio.subprocess.Process]
    outputs: list[Path]

    async def ready(self) -> dict[str, Any]:
        lines = [await _read_line(process, 300) for process in self.processes]
        return {
            "ready": sum(line["ready"] for line in lines),
            "failed": sum(line["failed"] for line in lines),
            "first_failure": next((line["first_failure"] for line in lines if line["failed"]), []),
        }

    async def collect(self, within: float) -> dict[str, Any]:
        """Wait until every socket has every event, or ``within`` seconds; gather what arrived."""
        pending = list(self.processes)
        with suppress(TimeoutError):
            async with asyncio.timeout(within):
                while pending:
                    await _read_line(pending[0], None)
                    pending.pop(0)
        for process in pending:  # out of time: make them report what they have
            assert process.stdin is not None
            process.stdin.write(b"collect\n")
        for process in pending:
            await _read_line(process, 60)
        reports = await asyncio.to_thread(
            lambda: [orjson.loads(p.read_bytes()) for p in self.outputs]
        )
        return _merge(reports)

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes:
            with suppress(psutil.NoSuchProcess):
                times = psutil.Process(process.pid).cpu_times()
                total += times.user + times.system
        return total


@asynccontextmanager
async def client_processes(
    url: str,
    query: str,
    *,
    subscribers: int,
    events: int,
    folder: Path,
    compression: bool = True,
) -> AsyncIterator[Clients]:
    """``PROCESSES`` client processes holding ``subscribers`` sockets between them."""
    shares = [
        subscribers // PROCESSES + (1 if index < subscribers % PROCESSES else 0)
        for index in range(PROCESSES)
    ]
    outputs = [folder / f"client-{index}.json" for index in range(PROCESSES)]
    processes = []
    try:
        for share, output in zip(shares, outputs, strict=True):
            output.unlink(missing_ok=True)
            arguments = [url, str(share), str(events), str(output), query]
            if not compression:
                arguments.append("--no-compression")
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.fanout_client",
                    *arguments,
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        yield Clients(processes, outputs)
    finally:
        for process in processes:
            if process.returncode is None:
                with suppress(ProcessLookupError):
                    process.kill()
            await process.wait()


async def _read_line(process: asyncio.subprocess.Process, within: float | None) -> Any:
    assert process.stdout is not None
    async with asyncio.timeout(within):
        line = await process.stdout.readline()
    if not line:
        raise RuntimeError(f"a fan-out client exited early (code {await process.wait()})")
    return orjson.loads(line)


def _merge(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    received: dict[str, list[float]] = {}
    closes: dict[str, int] = {}
    for report in reports:
        for key, times in report["received"].items():
            received.setdefault(key, []).extend(times)
        for code, count in report["closes"].items():
            closes[code] = closes.get(code, 0) + count
    return {
        "received": received,
        "complete_sockets": sum(report["complete_sockets"] for report in reports),
        "errors": sum(report["errors"] for report in reports),
        "messages": sum(report["messages"] for report in reports),
        "closes": closes,
        "client_fd_limit": min(report["fd_limit"] for report in reports),
    }


def delivery_figures(
    sent: dict[str, float], outcome: dict[str, Any], expected: int
) -> dict[str, Any]:
    """Latency from each event's commit (or due time) to each subscriber, and throughput."""
    latencies = [
        received - sent[key] for key, times in outcome["received"].items() for received in times
    ]
    last = max((max(times) for times in outcome["received"].values() if times), default=0.0)
    span = last - min(sent.values()) if latencies else 0.0
    return {
        "delivered": len(latencies),
        "expected": expected,
        "messages": outcome["messages"],
        "complete_sockets": outcome["complete_sockets"],
        "graphql_errors": outcome["errors"],
        "latency": percentiles(latencies),
        "burst_seconds": round(span, 3),
        "deliveries_per_second": round(len(latencies) / span) if span else 0,
    }


def collect_timeout(subscribers: int, events: int) -> float:
    """Generous: 1 ms of server time per delivery would already be several times too slow."""
    return 30.0 + subscribers * events * 0.001


if __name__ == "__main__":
    asyncio.run(main(_parse(None)))
