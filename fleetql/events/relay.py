"""The relay: hands logged events to the bus after their transactions committed, in id order.

Writers never publish: they log the event in the same transaction as the change (a
transactional outbox), so the log and the state cannot disagree and a crash between commit and
publish loses nothing.

With a shared event backend (postgres://, redis://) one relay among all replicas leads (a
PostgreSQL advisory lock on a connection of its own) and publishes for everyone, remembering its
position in the database; the others stand by to take over when its connection goes. With
memory:// every process is its own relay, reading the log from where it stood at start, so
several replicas still all see every change. It wakes on the log's NOTIFY (a trigger sends it at
commit), on a local ``wake()``, and at least every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.db import events as log
from fleetql.events.backends import asyncpg_dsn
from fleetql.events.bus import EventBus
from fleetql.metrics.instruments import EventMetrics

__all__ = ["EventRelay"]

logger = logging.getLogger(__name__)

# pg_advisory_lock key: "fleetql relay" as a number, unlikely to meet another application's.
LEADER_LOCK = 0x666C6565_72656C61
WAKE_CHANNEL = "fleetql_event_log"


class EventRelay:
    """Run ``run()`` as a task for as long as the process serves; ``wake()`` after a commit."""

    def __init__(
        self,
        database_url: str,
        sessions: async_sessionmaker[AsyncSession],
        bus: EventBus,
        *,
        shared: bool = True,
        poll_interval: float = 0.5,
        batch: int = 500,
        metrics: EventMetrics | None = None,
    ) -> None:
        self._shared = shared
        self._dsn = asyncpg_dsn(database_url)
        self._sessions = sessions
        self._bus = bus
        self._poll_interval = poll_interval
        self._batch = batch
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self.leading = False
        self.published = 0
        self._local_position: int | None = None
        if metrics is not None:
            metrics.relay_leading.set_function(lambda: 1 if self.leading else 0)

    def wake(self) -> None:
        self._wake.set()

    async def wake_after(self, change: object) -> None:
        """The poller's hook: a check committed a change (and its events)."""
        self._wake.set()

    async def run(self) -> None:
        """Lead or stand by, forever; reconnect with backoff when PostgreSQL goes away."""
        backoff = 0.2
        while True:
            try:
                connection = await asyncpg.connect(self._dsn, timeout=10)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning("event relay cannot connect: %s", type(error).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            try:
                await self._lead_or_wait(connection)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # PostgreSQL went away (or a query failed): step down, reconnect, lead again.
                logger.warning("event relay stepped down: %s", type(error).__name__)
                await asyncio.sleep(backoff)
            finally:
                self.leading = False
                connection.terminate()

    async def _lead_or_wait(self, connection: Any) -> None:
        self._lost.clear()
        connection.add_termination_listener(lambda _: self._lost.set())
        while self._shared and not await connection.fetchval(
            "SELECT pg_try_advisory_lock($1)", LEADER_LOCK
        ):
            await self._sleep(self._poll_interval * 4)
        self.leading = True
        await connection.add_listener(WAKE_CHANNEL, lambda *_: self._wake.set())
        async with self._sessions() as session:
            if self._shared:
                last, _ = await log.relay_position(session)
            elif self._local_position is None:
                last = self._local_position = await log.latest_event_id(session)
            else:
                last = self._local_position
        logger.info("event relay %s from event %d", "leading" if self._shared else "local", last)
        while True:
            self._wake.clear()
            if connection.is_closed():
                raise ConnectionError("the relay's connection closed")
            last = await self._relay_after(last)

    async def _relay_after(self, last: int) -> int:
        """Publish what is ready after ``last``; wait for more when nothing is."""
        async with self._sessions() as session:
            ready = await log.publishable_events(session, after=last, limit=self._batch)
        if not ready:
            await self._sleep(self._poll_interval, wakeable=True)
            return last
        ids = [event.id for event in ready]
        try:
            await self._bus.publish_ids(ids)
        except Exception as error:
            # Not published: try the same events again shortly; nothing is skipped.
            logger.warning("cannot publish events %d..%d: %s", ids[0], ids[-1], error)
            await self._sleep(1.0)
            return last
        self.published += len(ids)
        if self._shared:
            async with self._sessions() as session:
                await log.set_relay_position(session, ids[-1])
                await session.commit()
        else:
            self._local_position = ids[-1]
        return ids[-1]

    async def _sleep(self, seconds: float, *, wakeable: bool = False) -> None:
        """Sleep, ending early when the connection is lost (or, if wakeable, on a wake)."""
        waits = [asyncio.ensure_future(self._lost.wait())]
        if wakeable:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if self._lost.is_set():
            raise ConnectionError("the relay's connection was lost")
