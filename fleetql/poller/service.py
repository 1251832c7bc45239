"""Running the poller for as long as a server (or ``fleetql poll``) runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.config import Settings
from fleetql.crypto import KubeconfigCipher
from fleetql.metrics.instruments import Metrics
from fleetql.poller.client import ClientPolicy
from fleetql.poller.pool import ClientPool
from fleetql.poller.worker import Poller, Publish, publish_nothing

logger = logging.getLogger(__name__)


@asynccontextmanager
async def running_poller(
    settings: Settings,
    *,
    sessions: async_sessionmaker[AsyncSession],
    cipher: KubeconfigCipher,
    publish: Publish = publish_nothing,
    metrics: Metrics | None = None,
) -> AsyncIterator[Poller]:
    """Start the poller and the pool's idle cleanup as owned tasks; on exit stop both (the
    poller releasing the claims it holds), then close every client. ``metrics`` receives the
    poller's and the pool's instruments."""
    manager = settings.cluster_manager
    metrics = metrics or Metrics(process_metrics=False)
    async with ClientPool(
        max_clients=manager.max_clients,
        idle_timeout=manager.cleanup_interval.total_seconds(),
        metrics=metrics.pool,
    ) as pool:
        poller = Poller(
            sessions=sessions,
            cipher=cipher,
            settings=settings.poller,
            pool=pool,
            publish=publish,
            metrics=metrics.poller,
            client_policy=ClientPolicy.from_settings(settings),
        )
        tasks = [
            asyncio.create_task(_supervised("poller.run", poller.run), name="poller.run"),
            asyncio.create_task(
                _supervised("poller.cleanup", lambda: _close_idle_forever(pool)),
                name="poller.cleanup",
            ),
        ]
        logger.info(
            "poller started: every %s, %d checks at a time",
            settings.poller.check_interval,
            settings.poller.max_concurrency,
        )
        try:
            yield poller
        finally:
            await poller.stop()  # done already if the server drained first
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _close_idle_forever(pool: ClientPool) -> None:
    while True:
        await asyncio.sleep(min(pool.idle_timeout, 60.0))
        if closed := await pool.close_idle():
            logger.debug("closed %d idle cluster clients", closed)


async def _supervised(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Restart a crashed background loop with backoff; a crash is logged, never silent."""
    backoff = 1.0
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s crashed; restarting in %.0fs", name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
