"""Ending websockets whose credential stops being valid while they are open.

A JWT carries its expiry; an API token can be revoked at any moment, on any replica. Every few
seconds one query asks which of the tokens behind this process's open sockets are no longer
valid, and those sockets are closed: 4401 when the credential expired (get a new one and
reconnect), 4403 when it was revoked. Clients resume from their last event either way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.access import Principal
from fleetql.db.tokens import invalid_tokens

__all__ = ["CLOSE_EXPIRED", "CLOSE_REVOKED", "SocketGuard"]

logger = logging.getLogger(__name__)

CLOSE_EXPIRED = 4401
CLOSE_REVOKED = 4403

Close = Callable[[int, str], None]


@dataclass(frozen=True, slots=True)
class _Watched:
    principal: Principal
    close: Close


class SocketGuard:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, interval: float) -> None:
        self._sessions = sessions
        self._interval = interval
        self._watched: dict[int, _Watched] = {}
        self._ids = itertools.count()

    def watch(self, principal: Principal, close: Close) -> Callable[[], None]:
        """Watch a socket's principal until the returned function is called."""
        if principal.expires_at is None and principal.token_id is None:
            return lambda: None
        key = next(self._ids)
        self._watched[key] = _Watched(principal, close)

        def forget() -> None:
            self._watched.pop(key, None)

        return forget

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("cannot check the credentials of open websockets")

    async def check(self) -> None:
        now = datetime.now(UTC)
        for key, watched in list(self._watched.items()):
            expires_at = watched.principal.expires_at
            if expires_at is not None and expires_at <= now:
                self._end(
                    key, CLOSE_EXPIRED, "the credential has expired; reconnect with a new one"
                )
        token_ids = {
            watched.principal.token_id
            for watched in self._watched.values()
            if watched.principal.token_id is not None
        }
        if not token_ids:
            return
        async with self._sessions() as session:
            invalid = await invalid_tokens(session, list(token_ids))
        for key, watched in list(self._watched.items()):
            if watched.principal.token_id in invalid:
                self._end(key, CLOSE_REVOKED, "the API token was revoked")

    def _end(self, key: int, code: int, reason: str) -> None:
        watched = self._watched.pop(key, None)
        if watched is not None:
            logger.info("closing a websocket (%d): %s", code, reason)
            watched.close(code, reason)
