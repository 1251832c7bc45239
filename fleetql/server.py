"""How uvicorn serves the app: websocket protocol, pings, a way to cut off a stalled peer, and
a graceful shutdown.

A websocket peer that stops reading fills its TCP window; from then on every ``send``, including
the close frame, waits for room that never comes. ASGI has no way to drop such a connection, so
the protocol below puts the transport's ``abort`` into the scope's extensions, where the app
finds it when a graceful close has not finished in time.

On SIGTERM, ``FleetServer`` tells the app at once (so ``/readyz`` fails and websockets close
while uvicorn still waits for running requests), gives those requests most of
``server.shutdown_grace``, and exits 0: a drained replica is a clean stop, not a crash.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import timedelta
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from fleetql.config import Settings
from fleetql.logs import quiet_probe_access_logs
from fleetql.mailbox import Mailbox

__all__ = [
    "ABORT_EXTENSION",
    "AbortableWebSocketProtocol",
    "FleetServer",
    "request_grace",
    "uvicorn_config",
]

ABORT_EXTENSION = "fleetql.abort"


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol (it has write flow control and keep-alive pings),
    exposing ``transport.abort`` to the app, and holding less per open websocket (measured
    with ``python -m bench.fanout_profile``): its receive queue is a Mailbox (an
    ``asyncio.Queue`` is 3 KiB even while empty), its write gate holds no deque, and the
    handshake's parsed request and response (their headers: ~3.5 KiB) are dropped once the
    response is sent (the app keeps the scope's own copy of the request headers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Mailbox()  # type: ignore[assignment]
        self.writable = _Writable()  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # uvicorn reads them only until the handshake completes; websockets' parser keeps
            # the request object for the connection's life (a local of its generator), so its
            # headers are emptied too.
            headers = self.request.headers
            for name in list(headers):
                del headers[name]
            self.request = self.response = None  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][ABORT_EXTENSION] = self.transport.abort


class _Writable:
    """What uvicorn uses of ``asyncio.Event`` for its write flow control (``set``, ``clear``,
    ``is_set``, ``wait``), without the Event's 760-byte waiter deque per connection: a list
    exists only while a send waits for the peer to read."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> bool:
        if self._open:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class FleetServer(uvicorn.Server):
    """uvicorn's server, telling the app the moment a shutdown signal arrives.

    uvicorn notices ``should_exit`` on its next tick and then stops accepting, waits for running
    requests and runs the lifespan's shutdown; ``on_shutdown`` runs on the event loop right away,
    before all that. After a SIGTERM uvicorn re-raises the signal once it has finished, which
    would end the process with status -15; a completed drain exits 0 instead.
    """

    def __init__(self, config: uvicorn.Config, *, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_shutdown)


def request_grace(grace: timedelta) -> float:
    """Seconds running requests get out of the whole ``grace``: the rest (a fifth, at most 5 s)
    is kept for closing websockets, the poller's claims and the pools."""
    total = grace.total_seconds()
    return max(total - min(total / 5, 5.0), 0.1)


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """One place for the server options both ``fleetql serve`` and the tests use."""
    events = settings.events
    options.setdefault("host", settings.server.host)
    options.setdefault("port", settings.server.port)
    options.setdefault("timeout_graceful_shutdown", request_grace(settings.server.shutdown_grace))
    # uvicorn's loggers propagate to the root logger, where fleetql.logs puts one handler.
    options.setdefault("log_config", None)
    quiet_probe_access_logs()
    return uvicorn.Config(
        app,
        ws=AbortableWebSocketProtocol,
        ws_ping_interval=events.ping_interval.total_seconds(),
        ws_ping_timeout=events.ping_timeout.total_seconds(),
        # Events are a few hundred bytes: deflate saves little and its per-connection state is
        # half of a subscriber's memory (bench/fanout.py).
        ws_per_message_deflate=False,
        # A websocket message is bounded like an HTTP body (uvicorn's default is 16 MiB).
        ws_max_size=settings.server.max_body_bytes,
        lifespan="on",
        **options,
    )
