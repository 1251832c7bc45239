"""API tokens: stored as hashes, found by hash, revoked by a timestamp (kept for the audit)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.models import ApiTokenRecord

__all__ = [
    "ApiToken",
    "find_token",
    "insert_token",
    "invalid_tokens",
    "list_tokens",
    "revoke_token",
    "touch_token",
]

# A token's last use is written at most this often: a busy script should not turn every
# request into a write.
LAST_USE_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class ApiToken:
    id: uuid.UUID
    name: str
    role: str
    scope: str | None
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def _to_token(row: ApiTokenRecord) -> ApiToken:
    return ApiToken(
        id=row.id,
        name=row.name,
        role=row.role,
        scope=row.scope,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


async def insert_token(
    session: AsyncSession,
    *,
    name: str,
    role: str,
    scope: str | None,
    secret_hash: bytes,
    created_by: str | None,
    expires_at: datetime | None,
) -> ApiToken:
    record = ApiTokenRecord(
        name=name,
        role=role,
        scope=scope,
        secret_hash=secret_hash,
        created_by=created_by,
        expires_at=expires_at,
    )
    session.add(record)
    await session.flush()
    await session.refresh(record)
    return _to_token(record)


async def find_token(session: AsyncSession, secret_hash: bytes) -> ApiToken | None:
    """The token with this hash, revoked or not (the caller decides and says why)."""
    row = await session.scalar(
        select(ApiTokenRecord).where(ApiTokenRecord.secret_hash == secret_hash)
    )
    return None if row is None else _to_token(row)


async def touch_token(session: AsyncSession, token_id: uuid.UUID, now: datetime) -> None:
    """Record a use, unless one was recorded within LAST_USE_RESOLUTION."""
    await session.execute(
        update(ApiTokenRecord)
        .where(
            ApiTokenRecord.id == token_id,
            or_(
                ApiTokenRecord.last_used_at.is_(None),
                ApiTokenRecord.last_used_at < now - LAST_USE_RESOLUTION,
            ),
        )
        .values(last_used_at=now)
    )


async def list_tokens(session: AsyncSession) -> list[ApiToken]:
    rows = await session.scalars(
        select(ApiTokenRecord).order_by(ApiTokenRecord.created_at.desc(), ApiTokenRecord.id)
    )
    return [_to_token(row) for row in rows.all()]


async def revoke_token(session: AsyncSession, token_id: uuid.UUID) -> ApiToken | None:
    """Revoke now (a second revocation keeps the first time); None for an unknown id."""
    row = await session.scalar(
        update(ApiTokenRecord)
        .where(ApiTokenRecord.id == token_id)
        .values(revoked_at=func.coalesce(ApiTokenRecord.revoked_at, func.now()))
        .returning(ApiTokenRecord)
    )
    return None if row is None else _to_token(row)


async def invalid_tokens(session: AsyncSession, token_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these tokens are revoked, expired or gone: their open websockets must close."""
    if not token_ids:
        return set()
    valid = await session.scalars(
        select(ApiTokenRecord.id).where(
            ApiTokenRecord.id.in_(token_ids),
            ApiTokenRecord.revoked_at.is_(None),
            or_(ApiTokenRecord.expires_at.is_(None), ApiTokenRecord.expires_at > func.now()),
        )
    )
    return set(token_ids) - set(valid.all())
