"""What the read functions of ``fleetql.db`` run their statements on.

They take a session (a unit of work reading what it just wrote) or a bare connection (a
request's shared reads), and execute Core statements on its connection: rows that become
records anyway need none of the ORM's result handling, which costs more than the statement.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = ["Reader", "connection_of"]

Reader = AsyncSession | AsyncConnection


async def connection_of(reader: Reader) -> AsyncConnection:
    """The connection to run a read on (a session's own, beginning as the session would)."""
    if isinstance(reader, AsyncConnection):
        return reader
    return await reader.connection()
