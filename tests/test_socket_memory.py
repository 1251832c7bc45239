"""What the server holds per idle websocket subscriber (issue 5: at most 50 KiB each).

The server runs in a thread of this process, so tracemalloc sees it; only allocations made on
that thread (their stack starts in ``threading.py``) are counted, not the test's own clients.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fleetql.mailbox import Mailbox
from fleetql.server import AbortableWebSocketProtocol
from tests.conftest import ThreadedServer
from tests.wsclient import GraphQLWebSocket

SUBSCRIPTION = (
    "subscription { clusterStateChanged { id type clusterId previousStatus status"
    " cluster { id name status nodeCount readyNodeCount } } }"
)
# The target is 50 KiB per subscriber by RSS; tracemalloc sees a few KiB less.
BUDGET_BYTES = 47 * 1024


@asynccontextmanager
async def subscribers(server: ThreadedServer, count: int) -> AsyncIterator[None]:
    """``count`` websockets, each with one subscription the server has registered."""
    async with AsyncExitStack() as stack:
        for _ in range(count):
            socket = await stack.enter_async_context(GraphQLWebSocket.open(server.ws_url))
            await socket.subscribe(SUBSCRIPTION)
            await socket.query("{ __typename }")  # answered after the subscribe was read
        yield


def _server_thread_bytes(snapshot: tracemalloc.Snapshot) -> int:
    return sum(
        trace.size
        for trace in snapshot.traces
        if any(frame.filename.endswith("threading.py") for frame in trace.traceback)
    )


async def test_an_idle_subscriber_holds_less_than_the_budget(server: ThreadedServer) -> None:
    count = 20
    async with subscribers(server, 5):  # first-use caches (parser, validation) warm up
        tracemalloc.start(64)
        try:
            before = _server_thread_bytes(tracemalloc.take_snapshot())
            async with subscribers(server, count):
                after = _server_thread_bytes(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
    per_subscriber = (after - before) / count
    assert per_subscriber < BUDGET_BYTES, f"{per_subscriber / 1024:.1f} KiB per subscriber"


async def test_an_open_websocket_keeps_no_handshake_and_no_empty_queue(
    server: ThreadedServer,
) -> None:
    async def inspect() -> list[tuple[object, object, bool, bool]]:
        return [
            (
                protocol.request,
                protocol.response,
                isinstance(protocol.queue, Mailbox) and protocol.queue.empty(),
                protocol.writable.is_set(),
            )
            for protocol in server.server.server_state.connections
            if isinstance(protocol, AbortableWebSocketProtocol)
        ]

    async with subscribers(server, 1):
        states = await server.call(inspect())
    assert states
    assert all(state == (None, None, True, True) for state in states), states
