"""Broadcast backends that survive a lost connection.

broadcaster's own PostgreSQL backend LISTENs and publishes on one asyncpg connection (concurrent
publishes fail with "another operation is in progress") and its listener task dies silently when
the connection goes. Here LISTEN has a connection of its own, publishing has a small pool, and a
lost connection is reported, reconnected and turned into a ``RESYNC`` event per channel, because
notifications sent meanwhile are gone and subscribers must catch up from the database.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

import asyncpg
from broadcaster import BroadcastBackend, Event

__all__ = [
    "RESYNC",
    "BackendDisconnected",
    "PostgresBackend",
    "Reconnectable",
    "ResilientBackend",
    "create_backend",
]

logger = logging.getLogger(__name__)

RESYNC = ""
"""The message of an event meaning "events may have been lost; subscribers must resynchronise".

Published events are never empty, so the empty message cannot be mistaken for one.
"""

# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more (default build).
PAYLOAD_LIMIT_BYTES = 8000
# Channels are identifiers: NAMEDATALEN - 1 bytes.
MAX_CHANNEL_BYTES = 63
_CHANNEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_POSTGRES_SCHEMES = ("postgres", "postgresql", "postgresql+asyncpg")
_SUPPORTED_SCHEMES = ("memory", *_POSTGRES_SCHEMES, "redis", "rediss")

# What a dropped or unreachable server looks like from asyncpg; anything else is a bug to raise.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError and ConnectionError
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
)


class BackendDisconnected(ConnectionError):
    """The LISTEN connection was lost: notifications sent since then are gone."""


@runtime_checkable
class Reconnectable(Protocol):
    """A backend that can reopen its connection and restore its subscriptions by itself."""

    async def reconnect(self) -> None: ...


def validate_channel(channel: str) -> None:
    """Refuse a channel PostgreSQL would truncate or that is not a plain identifier."""
    if not _CHANNEL.fullmatch(channel):
        raise ValueError(
            f"event channel {channel!r} is not an identifier: use letters, digits and _"
        )
    size = len(channel.encode())
    if size > MAX_CHANNEL_BYTES:
        raise ValueError(
            f"event channel {channel!r} is {size} bytes; PostgreSQL allows {MAX_CHANNEL_BYTES}"
        )


def asyncpg_dsn(url: str) -> str:
    """The asyncpg DSN of a PostgreSQL or SQLAlchemy URL; query parameters (``?host=``) kept."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in _POSTGRES_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: scheme {scheme!r}")
    return f"postgresql://{rest}"


def url_location(url: str) -> str:
    """Scheme and host of ``url``, safe to log: no user, password, path or other parameters."""
    parts = urlsplit(url)
    host = parts.hostname or ",".join(parse_qs(parts.query).get("host", [])) or "localhost"
    return f"{parts.scheme}://{host}"


class PostgresBackend(BroadcastBackend):
    """LISTEN/NOTIFY with a dedicated LISTEN connection and a separate publishing pool.

    A lost LISTEN connection makes ``next_published`` raise ``BackendDisconnected`` once;
    ``reconnect()`` then reopens it and LISTENs again on every subscribed channel.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        # BroadcastBackend.__init__ only raises NotImplementedError: not called.
        self._dsn = asyncpg_dsn(url)
        self._timeout = timeout  # for connecting and for each publish, so an outage fails fast
        self._listen_connection: Any = None
        self._pool: Any = None
        self._channels: set[str] = set()
        self._queue: asyncio.Queue[Event | BackendDisconnected] = asyncio.Queue()
        self._lost = False
        # LISTEN and UNLISTEN share one connection, which runs one statement at a time.
        self._listen_lock = asyncio.Lock()

    @property
    def listen_pid(self) -> int | None:
        """The server process of the LISTEN connection, to find it in pg_stat_activity."""
        if self._listen_connection is None:
            return None
        pid: int = self._listen_connection.get_server_pid()
        return pid

    async def connect(self) -> None:
        self._lost = False
        self._queue = asyncio.Queue()  # a loss reported before a previous disconnect is moot
        self._pool = await self._with_timeout(
            asyncpg.create_pool(self._dsn, min_size=1, max_size=4, timeout=self._timeout),
            "connecting the events publishing pool",
        )
        try:
            async with self._listen_lock:
                self._listen_connection = await self._open_listen_connection()
        except BaseException:
            await self._close_pool()
            raise

    async def disconnect(self) -> None:
        async with self._listen_lock:
            connection, self._listen_connection = self._listen_connection, None
        if connection is not None:
            connection.remove_termination_listener(self._on_termination)
            try:
                await connection.close(timeout=self._timeout)
            except Exception:
                connection.terminate()
        await self._close_pool()

    async def reconnect(self) -> None:
        """Reopen the LISTEN connection and re-LISTEN every channel.

        Raises OSError or an asyncpg error while PostgreSQL is still down: the caller retries.
        """
        async with self._listen_lock:
            old, self._listen_connection = self._listen_connection, None
            self._lost = True  # until the new connection LISTENs
            if old is not None:
                old.remove_termination_listener(self._on_termination)
                old.terminate()
            self._listen_connection = await self._open_listen_connection()
            self._lost = False

    async def subscribe(self, channel: str) -> None:
        """LISTEN on ``channel``; while the connection is down, it is LISTENed at reconnect."""
        validate_channel(channel)
        async with self._listen_lock:
            self._channels.add(channel)
            await self._on_listen_connection(
                lambda connection: connection.add_listener(channel, self._on_notification)
            )

    async def unsubscribe(self, channel: str) -> None:
        async with self._listen_lock:
            self._channels.discard(channel)
            if self._listen_connection is None:
                return  # lost or closed: nothing is LISTENed, and reconnect() skips the channel
            await self._on_listen_connection(
                lambda connection: connection.remove_listener(channel, self._on_notification)
            )

    async def publish(self, channel: str, message: str) -> None:
        """NOTIFY through the pool, so concurrent publishes do not wait on the LISTEN connection."""
        validate_channel(channel)
        if not isinstance(message, str):
            raise TypeError(f"event message must be str, not {type(message).__name__}")
        size = len(message.encode())
        if size >= PAYLOAD_LIMIT_BYTES:
            raise ValueError(
                f"event payload is {size} bytes; PostgreSQL NOTIFY accepts fewer than "
                f"{PAYLOAD_LIMIT_BYTES}: publish ids and load the rest from the database"
            )
        if self._pool is None:
            raise RuntimeError("PostgresBackend.publish called before connect()")
        what = f"publishing on event channel {channel!r}"
        try:
            await self._notify(channel, message, what)
        except TimeoutError:
            raise
        except _CONNECTION_ERRORS as error:
            raise ConnectionError(
                f"{what} failed (is PostgreSQL reachable?): {type(error).__name__}: {error}"
            ) from error

    async def _notify(self, channel: str, message: str, what: str) -> None:
        # The acquire timeout also bounds the release, which waits for a query's cancellation.
        connection = await self._with_timeout(self._pool.acquire(timeout=self._timeout), what)
        try:
            await self._with_timeout(
                connection.execute("SELECT pg_notify($1, $2)", channel, message), what
            )
        except TimeoutError:
            # Cancelling the query would need a round trip to a server that is not answering.
            connection.terminate()
            raise
        finally:
            await self._pool.release(connection)

    async def next_published(self) -> Event:
        item = await self._queue.get()
        if isinstance(item, BackendDisconnected):
            raise item
        return item

    async def _open_listen_connection(self) -> Any:
        connection = await self._with_timeout(
            asyncpg.connect(self._dsn, timeout=self._timeout),
            "connecting the events LISTEN connection",
        )
        try:
            for channel in sorted(self._channels):
                await connection.add_listener(channel, self._on_notification)
        except BaseException:
            connection.terminate()
            raise
        # Added after the LISTENs, so a connection lost before this point fails here instead.
        connection.add_termination_listener(self._on_termination)
        if connection.is_closed():
            raise BackendDisconnected("the events LISTEN connection closed while opening")
        return connection

    async def _on_listen_connection(self, operation: Callable[[Any], Awaitable[None]]) -> None:
        """Run a LISTEN or UNLISTEN; a connection error is a loss, reported by next_published."""
        connection = self._listen_connection
        if connection is None:
            if not self._lost:
                raise RuntimeError("PostgresBackend used before connect()")
            return
        try:
            await operation(connection)
        except _CONNECTION_ERRORS as error:
            logger.debug("events LISTEN connection failed: %r", error)
            self._on_termination(connection)

    def _on_notification(self, connection: object, pid: int, channel: str, payload: str) -> None:
        self._queue.put_nowait(Event(channel=channel, message=payload))

    def _on_termination(self, connection: Any) -> None:
        if connection is not self._listen_connection or self._lost:
            return  # an old connection, one closed on purpose, or a loss already reported
        self._lost = True
        self._listen_connection = None
        if not connection.is_closed():
            connection.terminate()
        self._queue.put_nowait(
            BackendDisconnected("the events LISTEN connection to PostgreSQL was lost")
        )

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._timeout)
        except Exception:
            pool.terminate()

    async def _with_timeout(self, operation: Awaitable[Any], what: str) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                return await operation
        except TimeoutError as error:
            raise TimeoutError(
                f"{what} timed out after {self._timeout} s: is PostgreSQL reachable?"
            ) from error


class ResilientBackend(BroadcastBackend):
    """Wraps a backend so that a connection problem becomes a reconnection and RESYNC events.

    broadcaster's listener task dies on the first exception from ``next_published``; this one never
    raises for a connection problem: it reconnects with exponential backoff, then yields
    ``Event(channel, RESYNC)`` for every subscribed channel before the events that follow.
    """

    def __init__(
        self,
        inner: BroadcastBackend,
        *,
        label: str | None = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.inner = inner
        self.label = label or type(inner).__name__  # for logs: never a URL with a password
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.reconnects = 0
        self.connected = False
        self._sleep = sleep
        self._channels: set[str] = set()
        self._pending: deque[Event] = deque()
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        await self.inner.connect()
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False
        await self.inner.disconnect()

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            await self.inner.subscribe(channel)
            self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            self._channels.discard(channel)
            await self.inner.unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self.inner.publish(channel, message)

    async def next_published(self) -> Event:
        while not self._pending:
            try:
                return await self.inner.next_published()
            except Exception as error:  # CancelledError is a BaseException: it passes through
                self.connected = False
                logger.warning(
                    "events backend %s lost its connection (%s: %s); reconnecting",
                    self.label,
                    type(error).__name__,
                    error,
                )
                await self._reconnect()
                self._pending.extend(
                    Event(channel=channel, message=RESYNC) for channel in sorted(self._channels)
                )
        return self._pending.popleft()

    async def _reconnect(self) -> None:
        delay = self.initial_backoff
        attempt = 1
        while True:
            try:
                async with self._lock:  # not held while sleeping: subscribers are not blocked
                    await self._reconnect_once()
            except Exception as error:
                logger.warning(
                    "events backend %s still unreachable after attempt %d (%s: %s); "
                    "retrying in %.3g s",
                    self.label,
                    attempt,
                    type(error).__name__,
                    error,
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                attempt += 1
            else:
                break
        self.reconnects += 1
        self.connected = True
        logger.info("events backend %s reconnected after %d attempt(s)", self.label, attempt)

    async def _reconnect_once(self) -> None:
        if isinstance(self.inner, Reconnectable):
            await self.inner.reconnect()
            return
        try:
            await self.inner.disconnect()
        except Exception:
            logger.debug("closing the lost events backend %s failed", self.label, exc_info=True)
        await self.inner.connect()
        for channel in sorted(self._channels):
            await self.inner.subscribe(channel)


def create_backend(url: str, *, database_url: str | None) -> BroadcastBackend:
    """The resilient backend an events URL names; a bare ``postgres://`` is the database itself."""
    scheme, separator, rest = url.partition("://")
    supported = ", ".join(f"{name}://" for name in _SUPPORTED_SCHEMES)
    if not separator:
        raise ValueError(f"the events URL has no scheme: use one of {supported}")
    if scheme in _POSTGRES_SCHEMES and not rest:
        if database_url is None:
            raise ValueError(
                f"events URL {url!r} means the configured database, but none is configured"
            )
        url = database_url
        scheme = url.partition("://")[0]
    if scheme not in _SUPPORTED_SCHEMES:
        raise ValueError(f"unsupported events URL scheme {scheme!r}: use one of {supported}")
    inner: BroadcastBackend
    if scheme == "memory":
        from broadcaster._backends.memory import MemoryBackend

        inner = MemoryBackend(url)
    elif scheme in _POSTGRES_SCHEMES:
        inner = PostgresBackend(url)
    else:
        try:
            from broadcaster._backends.redis import RedisBackend
        except ImportError as error:
            raise ValueError(f"install redis to use a {scheme}:// events URL") from error
        inner = RedisBackend(url)
    return ResilientBackend(inner, label=url_location(url))
