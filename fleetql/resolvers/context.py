"""The per-request context every resolver receives."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from fleetql.access import Principal, Role, Scope
from fleetql.auth import Authenticator
from fleetql.auth.sockets import SocketGuard
from fleetql.config import Settings
from fleetql.crypto import KubeconfigCipher
from fleetql.db.engine import is_lost_connection
from fleetql.events.bus import EventBus
from fleetql.events.relay import EventRelay
from fleetql.metrics.instruments import Metrics

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    """What the app's lifespan owns and hands to every request."""

    settings: Settings
    # Sessions for writes (a transaction each, committed by their user)…
    sessions: async_sessionmaker[AsyncSession]
    # … and for reads: the same pool, AUTOCOMMIT (see ``db.engine``); through Context.read.
    reads: AsyncEngine
    cipher: KubeconfigCipher
    events: EventBus
    relay: EventRelay
    authenticator: Authenticator
    socket_guard: SocketGuard
    # This app's instruments, on a registry of its own; ``/metrics`` renders them.
    metrics: Metrics = field(default_factory=Metrics)


class SharedReads:
    """One pooled connection for the reads of one request or of one websocket event's
    resolvers: a cluster's ``events`` and ``availability`` resolve concurrently, and every list
    page is a resolver of its own.

    The connection is checked out by the first reader and given back when the last one is done
    (``held`` counts as a reader: the HTTP view holds the reads for the whole request, so a
    query's fields share one checkout even when they run one after the other). It never
    outlives a request and never spans a websocket's events (whose context lasts as long as the
    connection). Readers take turns: a connection runs one statement at a time.

    A bare AUTOCOMMIT connection, not a Session: the reads execute Core statements, and a
    Session's transaction bookkeeping cost more CPU than a small statement (0.12 ms a request).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._readers = 0
        self._turn = asyncio.Lock()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        self._readers += 1
        try:
            async with self._turn:
                if self._connection is None:
                    self._connection = self._engine.connect()
                connection = self._connection
                try:
                    if connection.sync_connection is None:
                        await connection.start()
                    yield connection
                except BaseException:
                    # A failed statement (a lost connection, say) or a cancelled one, perhaps
                    # mid-statement: give the connection back; readers still waiting check
                    # out another.
                    self._connection = None
                    await _close(connection)
                    raise
        finally:
            self._readers -= 1
            await self._close_if_idle()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Keep the connection that readers check out inside this block until the block ends."""
        self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1
            await self._close_if_idle()

    async def _close_if_idle(self) -> None:
        if self._readers == 0 and self._connection is not None:
            idle, self._connection = self._connection, None
            await _close(idle)


async def _close(connection: AsyncConnection) -> None:
    """Close even when the closing task is being cancelled: a connection abandoned half-way
    back to the pool is lost to it until the garbage collector finds it."""
    if connection.sync_connection is not None:
        await asyncio.shield(connection.close())


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

    def reading(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reads only (AUTOCOMMIT), shared with the other reads of this request
        (see SharedReads); writes open a session of their own and commit it. Prefer ``read``,
        which also survives a connection that died in the pool."""
        return self._shared_reads().connection()

    async def read(
        self,
        fetch: Callable[Concatenate[AsyncConnection, P], Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``await fetch(connection, *args, **kwargs)`` on the read connection, once more on a new
        connection if the pooled one turns out to be dead (there is no ping per checkout).
        Only reads are retried: repeating one changes nothing."""
        try:
            async with self.reading() as connection:
                return await fetch(connection, *args, **kwargs)
        except Exception as error:
            if not is_lost_connection(error):
                raise
            logger.warning(
                "a pooled database connection was lost (%s); reading again on a new one",
                type(getattr(error, "orig", error)).__name__,
            )
        async with self.reading() as connection:
            return await fetch(connection, *args, **kwargs)

    def holding_reads(self) -> AbstractAsyncContextManager[None]:
        """Keep the read connection from the first read until this block
        ends: the HTTP view wraps each request in it."""
        return self._shared_reads().held()

    def _shared_reads(self) -> SharedReads:
        if self._reads is None:
            self._reads = SharedReads(self.services.reads)
        return self._reads

    @property
    def actor(self) -> str | None:
        """What the event log records as having made a change."""
        return None if self.principal is None else self.principal.name

    def scope(self, role: Role = Role.VIEWER) -> Scope:
        """The clusters on which the caller holds ``role`` (none at all before it is known)."""
        return () if self.principal is None else self.principal.scope(role)
