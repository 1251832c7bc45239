"""API tokens: stored as hashes, found by hash, revoked by a timestamp (kept for the audit)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetql.db.models import ApiTokenRecord
from fleetql.db.reads import Reader, connection_of

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


# Every request with an API token reads its token: one Core statement, built once.
_tokens = cast(Table, ApiTokenRecord.__table__)
_K = _tokens.c
_TOKENS = select(
    _K.id,
    _K.name,
    _K.role,
    _K.scope,
    _K.created_by,
    _K.created_at,
    _K.expires_at,
    _K.last_used_at,
    _K.revoked_at,
)
if [column.key for column in _TOKENS.selected_columns] != [spec.name for spec in fields(ApiToken)]:
    raise AssertionError("_TOKENS must select ApiToken's fields in order")
_FIND_TOKEN = _TOKENS.where(_K.secret_hash == bindparam("secret_hash", type_=_K.secret_hash.type))
_LIST_TOKENS = _TOKENS.order_by(_K.created_at.desc(), _K.id)
_NOW = bindparam("now", type_=_K.last_used_at.type)
_TOUCH_TOKEN = (
    update(_tokens)
    .where(
        _K.id == bindparam("token_id", type_=_K.id.type),
        or_(_K.last_used_at.is_(None), _K.last_used_at < _NOW - LAST_USE_RESOLUTION),
    )
    .values(last_used_at=_NOW)
)


async def find_token(reader: Reader, secret_hash: bytes) -> ApiToken | None:
    """The token with this hash, revoked or not (the caller decides and says why)."""
    connection = await connection_of(reader)
    row = (await connection.execute(_FIND_TOKEN, {"secret_hash": secret_hash})).first()
    return None if row is None else ApiToken(*row)


async def touch_token(executor: Reader, token_id: uuid.UUID, now: datetime) -> None:
    """Record a use, unless one was recorded within LAST_USE_RESOLUTION (one statement, which
    commits itself on an AUTOCOMMIT connection; otherwise the caller commits)."""
    connection = await connection_of(executor)
    await connection.execute(_TOUCH_TOKEN, {"token_id": token_id, "now": now})


async def list_tokens(reader: Reader) -> list[ApiToken]:
    connection = await connection_of(reader)
    return [ApiToken(*row) for row in (await connection.execute(_LIST_TOKENS)).all()]


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
