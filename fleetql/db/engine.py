"""The engine and session factories: one engine per process, one session per unit of work."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from fleetql.config import DatabaseSettings

__all__ = [
    "APPLICATION_NAME",
    "create_engine",
    "create_read_engine",
    "create_session_factory",
    "is_lost_connection",
]

# What the pool's connections call themselves in pg_stat_activity.
APPLICATION_NAME = "fleetql"


def create_engine(url: str, settings: DatabaseSettings) -> AsyncEngine:
    """Size the pool from settings; the defaults (10 + 10 overflow) suit one replica. jsonb
    (labels, the event log's changes) is read and written with orjson: the standard library's
    json was a fifth of the CPU of loading a replay.

    No pre-ping: it cost a round trip on every checkout, every request. A connection that died
    in the pool (PostgreSQL restarted, a backend terminated) fails its first statement instead;
    SQLAlchemy then marks every connection pooled before it stale, so one failure replaces them
    all, reads are retried once (``resolvers.context``) and writes report the error.
    """
    connect_args: dict[str, Any] = {
        "statement_cache_size": settings.statement_cache_size,
        "prepared_statement_cache_size": settings.statement_cache_size,
    }
    if "application_name" not in url:  # the operator's own name wins
        connect_args["server_settings"] = {"application_name": APPLICATION_NAME}
    return create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout.total_seconds(),
        pool_recycle=settings.pool_recycle.total_seconds(),
        json_serializer=_dump_json,
        json_deserializer=orjson.loads,
        connect_args=connect_args,
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Objects stay usable after commit, so nothing lazy-loads (MissingGreenlet) afterwards."""
    return async_sessionmaker(engine, expire_on_commit=False)


def create_read_engine(engine: AsyncEngine) -> AsyncEngine:
    """The engine reads check their connections out of, on the same pool: AUTOCOMMIT, so no
    BEGIN and no ROLLBACK round trips. Under READ COMMITTED each statement takes its own
    snapshot anyway, so a read sees what it saw inside a transaction; only a write on such a
    connection would lose atomicity, and nothing writes through it."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def is_lost_connection(error: BaseException) -> bool:
    """The statement failed because its connection is gone (SQLAlchemy invalidated it), not
    because of the statement: the same read on a new connection can succeed."""
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _dump_json(value: Any) -> str:
    """SQLAlchemy binds jsonb as text; orjson gives bytes. Values are plain JSON already (the
    event log converts Decimal and datetime itself, see ``events._jsonable``)."""
    return orjson.dumps(value).decode()
