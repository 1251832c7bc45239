"""Background upkeep every replica runs: pruning the event log, warning of expiring credentials.

Both are safe to run on several replicas at once: pruning deletes bounded batches (another
replica's batch just finds fewer rows), and a credential is flagged by one conditional UPDATE,
so its CREDENTIAL_EXPIRING event is written once however many replicas look.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.config import ClusterManagerSettings
from fleetql.db.events import NewEvent, log_events, prune_events
from fleetql.db.models import Cluster, EventType

__all__ = ["HousekeepingReport", "housekeep_once", "housekeeping_forever"]

logger = logging.getLogger(__name__)

PRUNE_BATCH = 1000


@dataclass(frozen=True)
class HousekeepingReport:
    pruned: int
    expiring: int


async def housekeep_once(
    sessions: async_sessionmaker[AsyncSession],
    settings: ClusterManagerSettings,
    *,
    now: datetime | None = None,
) -> HousekeepingReport:
    now = now or datetime.now(UTC)
    pruned = 0
    while True:
        async with sessions() as session:
            batch = await prune_events(
                session, older_than=now - settings.event_retention, batch=PRUNE_BATCH
            )
            await session.commit()
        pruned += batch
        if batch < PRUNE_BATCH:
            break
    async with sessions() as session:
        flagged = (
            await session.execute(
                update(Cluster)
                .where(
                    Cluster.deleted_at.is_(None),
                    Cluster.credential_warned_at.is_(None),
                    Cluster.credential_expires_at < now + settings.credential_expiry_warning,
                )
                .values(credential_warned_at=now)
                .returning(Cluster.id, Cluster.name, Cluster.credential_expires_at)
            )
        ).all()
        await log_events(
            session,
            [
                NewEvent(
                    cluster_id=row.id,
                    type=EventType.CREDENTIAL_EXPIRING,
                    status=None,
                    message=(
                        f"the credential of {row.name!r} expires at "
                        f"{row.credential_expires_at.isoformat()}"
                        if row.credential_expires_at > now
                        else f"the credential of {row.name!r} has expired"
                    ),
                )
                for row in flagged
            ],
        )
        await session.commit()
    if pruned or flagged:
        logger.info("housekeeping: pruned %d events, %d credentials expiring", pruned, len(flagged))
    return HousekeepingReport(pruned=pruned, expiring=len(flagged))


async def housekeeping_forever(
    sessions: async_sessionmaker[AsyncSession],
    settings: ClusterManagerSettings,
    *,
    interval: float = 300.0,
) -> None:
    while True:
        try:
            await housekeep_once(sessions, settings)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.warning("housekeeping failed (%s); trying again later", type(error).__name__)
        await asyncio.sleep(interval)
