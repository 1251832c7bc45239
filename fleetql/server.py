"""How uvicorn serves the app: websocket protocol, pings, and a way to cut off a stalled peer.

A websocket peer that stops reading fills its TCP window; from then on every ``send``, including
the close frame, waits for room that never comes. ASGI has no way to drop such a connection, so
the protocol below puts the transport's ``abort`` into the scope's extensions, where the app
finds it when a graceful close has not finished in time.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from fleetql.config import Settings

__all__ = ["ABORT_EXTENSION", "AbortableWebSocketProtocol", "uvicorn_config"]

ABORT_EXTENSION = "fleetql.abort"


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O websockets protocol (it has write flow control and keep-alive pings),
    exposing ``transport.abort`` to the app."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][ABORT_EXTENSION] = self.transport.abort


def uvicorn_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """One place for the server options both ``fleetql serve`` and the tests use."""
    events = settings.events
    options.setdefault("host", settings.server.host)
    options.setdefault("port", settings.server.port)
    return uvicorn.Config(
        app,
        ws=AbortableWebSocketProtocol,
        ws_ping_interval=events.ping_interval.total_seconds(),
        ws_ping_timeout=events.ping_timeout.total_seconds(),
        # Events are a few hundred bytes: deflate saves little and its per-connection state is
        # half of a subscriber's memory (bench/fanout.py).
        ws_per_message_deflate=False,
        lifespan="on",
        **options,
    )
