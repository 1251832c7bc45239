"""Draining a replica: what happens between SIGTERM and the server's last request.

An orchestrator stops a replica with SIGTERM and routes new work elsewhere once ``/readyz``
fails. From the first moment of shutdown this process therefore answers ``/readyz`` with 503,
closes every websocket with 1012 ("service restart") so consoles reconnect to another replica
and resume from their last event, and runs its drain hooks (the poller lets go of its claims),
while uvicorn stops accepting connections and lets running requests finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["SERVICE_RESTART", "Drain"]

logger = logging.getLogger(__name__)

SERVICE_RESTART = 1012
_CLOSE_TIMEOUT = 2.0
_CLOSE = {"type": "websocket.close", "code": SERVICE_RESTART, "reason": "service restart"}


class Drain:
    """The replica's shutdown state; ``begin()`` is idempotent and safe to call from any path
    (a signal, the lifespan's end), ``finished()`` waits for the hooks."""

    def __init__(self, *, abort_extension: str | None = None) -> None:
        self._abort_extension = abort_extension
        self._websockets: dict[int, tuple[Scope, Send]] = {}
        self._hooks: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._task is not None

    def on_drain(self, name: str, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` when draining starts (hooks run concurrently; a failure is logged)."""
        self._hooks.append((name, hook))

    def track_websockets(self, app: ASGIApp) -> ASGIApp:
        """Wrap ``app`` so each websocket it serves can be closed with 1012 on drain."""
        return _TrackedWebSockets(app, self)

    async def serve_websocket(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if self.started:
            # Refuse the handshake: the client goes to another replica.
            await send({"type": "websocket.close", "code": SERVICE_RESTART})
            return
        key = id(scope)
        self._websockets[key] = (scope, send)
        try:
            await app(scope, receive, send)
        finally:
            self._websockets.pop(key, None)

    def begin(self) -> None:
        """Start draining on the running loop; later calls do nothing."""
        if self._task is None:
            logger.info(
                "shutting down: /readyz answers 503, closing %d websockets (1012)",
                len(self._websockets),
            )
            self._task = asyncio.get_running_loop().create_task(self._run(), name="drain")

    async def finished(self) -> None:
        """Wait for the drain started by ``begin()`` (start one if none was)."""
        self.begin()
        assert self._task is not None
        await asyncio.shield(self._task)

    async def _run(self) -> None:
        jobs = [self._close(scope, send) for scope, send in list(self._websockets.values())]
        jobs += [self._hook(name, hook) for name, hook in self._hooks]
        await asyncio.gather(*jobs)

    async def _hook(self, name: str, hook: Callable[[], Awaitable[None]]) -> None:
        try:
            await hook()
        except Exception:
            logger.exception("drain step %s failed", name)

    async def _close(self, scope: Scope, send: Send) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await send(
                    {
                        "type": "websocket.close",
                        "code": SERVICE_RESTART,
                        "reason": "service restart",
                    }
                )
        except TimeoutError:
            abort: Any = scope.get("extensions", {}).get(self._abort_extension or "")
            if abort is not None:
                abort()  # the peer does not read: drop it
        except Exception:
            pass


class _TrackedWebSockets:
    """An ASGI app (a class, so Starlette's routes do not take it for an endpoint function)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self._app = app
        self._drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._drain.serve_websocket(self._app, scope, receive, send)
        else:
            await self._app(scope, receive, send)
