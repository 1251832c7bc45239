"""The per-request context every resolver receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
    # This app's instruments, on a registry of its own; ``/metrics`` renders them.
    metrics: Metrics = field(default_factory=Metrics)


@dataclass(frozen=True)
class Context:
    services: Services
    request_id: str
    # Over a websocket: close the whole connection with a code and a reason (e.g. a subscriber
    # that fell behind). Over HTTP there is no connection to close.
    close_connection: Callable[[int, str], None] | None = None
