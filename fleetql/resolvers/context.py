"""The per-request context every resolver receives."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.config import Settings
from fleetql.crypto import KubeconfigCipher


@dataclass(frozen=True)
class Services:
    """What the app's lifespan owns and hands to every request."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    cipher: KubeconfigCipher


@dataclass(frozen=True)
class Context:
    services: Services
    request_id: str
