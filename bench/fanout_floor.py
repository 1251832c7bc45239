"""The fan-out benchmark's send floor: a websocket server that only pushes ready-made bytes.

``python -m bench.fanout_floor PORT`` serves ``/graphql`` on 127.0.0.1 with the same uvicorn
websocket protocol as ``fleetql serve`` (the same permessage-deflate settings and write path),
answers graphql-transport-ws just enough for ``bench.fanout_client`` (ack, remember the
subscription, answer the probe query), and on ``POST /burst`` sends each message to every
subscriber in turn, message *i* not before its offset, so events "commit" on the schedule the
fleetql run had. No GraphQL, no event bus, no database: what is left is the cost of getting bytes
onto thousands of sockets, which no fan-out design in this stack can go below.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench._support import free_port
from bench.fanout_client import (
    ROOT,
    SUBSCRIPTION_ID,
    client_processes,
    collect_timeout,
    delivery_figures,
)
from fleetql.server import AbortableWebSocketProtocol

__all__ = ["measure_send_floor"]

PROTOCOL = "graphql-transport-ws"


# --- the floor server (its own process) -----------------------------------------------------------


class Subscribers:
    """The open sockets that have subscribed; the burst route sends to each of them."""

    def __init__(self) -> None:
        self.sockets: set[WebSocket] = set()

    async def serve(self, websocket: WebSocket) -> None:
        await websocket.accept(subprotocol=PROTOCOL)
        try:
            while True:
                message = orjson.loads(await websocket.receive_text())
                await self._answer(websocket, message)
        except WebSocketDisconnect:
            pass
        finally:
            self.sockets.discard(websocket)

    async def _answer(self, websocket: WebSocket, message: dict[str, Any]) -> None:
        kind, operation_id = message.get("type"), message.get("id")
        if kind == "connection_init":
            await websocket.send_text('{"type":"connection_ack"}')
        elif kind == "subscribe" and operation_id == SUBSCRIPTION_ID:
            self.sockets.add(websocket)
        elif kind == "subscribe":  # the probe query, answered after the subscription
            data = {"data": {"__typename": "Query"}}
            next_message = {"id": operation_id, "type": "next", "payload": data}
            await websocket.send_text(orjson.dumps(next_message).decode())
            await websocket.send_text(
                orjson.dumps({"id": operation_id, "type": "complete"}).decode()
            )

    async def burst(self, request: Request) -> Response:
        """Send every message to every subscriber, each not before its offset from now; report
        when each was due."""
        body = orjson.loads(await request.body())
        start = time.time()
        due: list[float] = []
        for text, offset in zip(body["messages"], body["offsets"], strict=True):
            due.append(start + offset)
            if (delay := due[-1] - time.time()) > 0:
                await asyncio.sleep(delay)
            for websocket in list(self.sockets):
                try:
                    await websocket.send_text(text)
                except (RuntimeError, OSError, WebSocketDisconnect):
                    self.sockets.discard(websocket)
        return Response(orjson.dumps({"due": due}), media_type="application/json")

    async def count(self, request: Request) -> Response:
        return Response(str(len(self.sockets)), media_type="text/plain")


def create_floor_app() -> Starlette:
    subscribers = Subscribers()
    return Starlette(
        routes=[
            WebSocketRoute("/graphql", subscribers.serve),
            Route("/burst", subscribers.burst, methods=["POST"]),
            Route("/subscribers", subscribers.count, methods=["GET"]),
        ]
    )


def serve_floor(port: int) -> None:
    """uvicorn as ``fleetql.server.uvicorn_config`` sets it up for websockets."""
    config = uvicorn.Config(
        create_floor_app(),
        host="127.0.0.1",
        port=port,
        ws=AbortableWebSocketProtocol,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="off",
        log_level="warning",
    )
    uvicorn.Server(config).run()


# --- measuring it (the benchmark's process) -------------------------------------------------------


async def measure_send_floor(
    commits: dict[str, float],
    template: dict[str, Any],
    *,
    query: str,
    subscribers: int,
    folder: Path,
    compression: bool = True,
) -> dict[str, Any]:
    """The fleetql run's sockets, events and commit schedule, through the floor server.

    ``commits`` maps each event's cluster id to its commit time in the fleetql run; ``template``
    is the data of one event as fleetql's schema renders it.
    """
    ordered = sorted(commits.items(), key=lambda item: item[1])
    messages = [_message_for(template, cluster_id) for cluster_id, _ in ordered]
    offsets = [committed - ordered[0][1] for _, committed in ordered]
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.fanout_floor", str(port), cwd=ROOT
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=900) as http:
            await _wait_for_floor(http, process)
            server = psutil.Process(process.pid)
            url = f"ws://127.0.0.1:{port}/graphql"
            async with client_processes(
                url,
                query,
                subscribers=subscribers,
                events=len(messages),
                folder=folder,
                compression=compression,
            ) as clients:
                ready = await clients.ready()
                cpu_before = _cpu(server)
                burst = orjson.dumps({"messages": messages, "offsets": offsets})
                due = (await http.post("/burst", content=burst)).json()["due"]
                outcome = await clients.collect(collect_timeout(subscribers, len(messages)))
                cpu = _cpu(server) - cpu_before
    finally:
        process.terminate()
        await process.wait()
    sent = {cluster_id: at for (cluster_id, _), at in zip(ordered, due, strict=True)}
    figures = delivery_figures(sent, outcome, ready["ready"] * len(messages))
    return {
        **ready,
        **figures,
        "compression": compression,
        "message_bytes": len(messages[0].encode()),
        "server_cpu_seconds": round(cpu, 3),
        "server_cpu_us_per_delivery": round(cpu * 1e6 / max(1, figures["delivered"]), 1),
    }


def _message_for(template: dict[str, Any], cluster_id: str) -> str:
    """The ``next`` message fleetql sends for this cluster's event, encoded as strawberry does."""
    data = copy.deepcopy(template)
    event = data["clusterStateChanged"]
    event["clusterId"] = cluster_id
    if event.get("cluster"):
        event["cluster"]["id"] = cluster_id
    message = {"id": SUBSCRIPTION_ID, "type": "next", "payload": {"data": data}}
    return json.dumps(message, separators=(",", ":"))


async def _wait_for_floor(http: httpx.AsyncClient, process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(60):
        while True:
            if process.returncode is not None:
                raise RuntimeError("the fan-out floor server exited")
            try:
                if (await http.get("/subscribers")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


if __name__ == "__main__":
    serve_floor(int(sys.argv[1]))
