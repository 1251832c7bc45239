"""The per-request context every resolver receives."""

from __future__ import annotations

from collections.abc import Callable
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

    @property
    def actor(self) -> str | None:
        """What the event log records as having made a change."""
        return None if self.principal is None else self.principal.name

    def scope(self, role: Role = Role.VIEWER) -> Scope:
        """The clusters on which the caller holds ``role`` (none at all before it is known)."""
        return () if self.principal is None else self.principal.scope(role)
