"""The per-request context every resolver receives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.access import Principal, Role, Scope
from fleetql.auth import Authenticator
from fleetql.auth.sockets import SocketGuard
from fleetql.config import Settings
from fleetql.crypto import KubeconfigCipher
from fleetql.events.bus import EventBus
from fleetql.events.relay import EventRelay
from fleetql.metrics.instruments import Metrics


@dataclass(frozen=True)
class Services:
    """What the app's lifespan owns and hands to every request."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    cipher: KubeconfigCipher
    events: EventBus
    relay: EventRelay
    authenticator: Authenticator
    socket_guard: SocketGuard
    # This app's instruments, on a registry of its own; ``/metrics`` renders them.
    metrics: Metrics = field(default_factory=Metrics)


class SharedReads:
    """One session for the reads that run at the same time in one context: a cluster's
    ``events`` and ``availability`` resolve concurrently, and each session costs a pool
    checkout with its pre-ping and a BEGIN … ROLLBACK, more than their statements do.

    The session opens with the first reader and closes when the last one is done, so it never
    outlives a request and never spans a websocket's events (whose context lasts as long as
    the connection). Readers take turns: an AsyncSession runs one statement at a time.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._session: AsyncSession | None = None
        self._readers = 0
        self._turn = asyncio.Lock()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        self._readers += 1
        try:
            async with self._turn:
                if self._session is None:
                    self._session = self._sessions()
                session = self._session
                try:
                    yield session
                except Exception:
                    # A failed statement aborts the transaction: the next reader gets a new one.
                    await session.rollback()
                    raise
                except BaseException:
                    # Cancelled, perhaps mid-statement: close it as an unshared session would
                    # be closed; readers still waiting open a new one.
                    self._session = None
                    await session.close()
                    raise
        finally:
            self._readers -= 1
            if self._readers == 0 and self._session is not None:
                idle, self._session = self._session, None
                await idle.close()


@dataclass(eq=False)
class Context:
    """Mutable for one reason: on a websocket the principal is only known once the client's
    ``connection_init`` arrives (strawberry also stores its payload here)."""

    services: Services
    request_id: str
    # Who is calling; None until authenticated, and then nothing is allowed.
    principal: Principal | None = None
    # Over a websocket: close the whole connection with a code and a reason (e.g. a subscriber
    # that fell behind). Over HTTP there is no connection to close.
    close_connection: Callable[[int, str], None] | None = None
    connection_params: dict[str, Any] | None = None
    _reads: SharedReads | None = field(default=None, init=False, repr=False)

    def reading(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session for reads only, shared with the reads running at the same time (see
        SharedReads); writes open a session of their own and commit it."""
        if self._reads is None:
            self._reads = SharedReads(self.services.sessions)
        return self._reads.session()

    @property
    def actor(self) -> str | None:
        """What the event log records as having made a change."""
        return None if self.principal is None else self.principal.name

    def scope(self, role: Role = Role.VIEWER) -> Scope:
        """The clusters on which the caller holds ``role`` (none at all before it is known)."""
        return () if self.principal is None else self.principal.scope(role)
