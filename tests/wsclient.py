"""A small GraphQL-over-websocket client speaking both protocols, for tests.

Written against the protocol texts rather than taken from a GraphQL client library, so the tests
see exactly the frames a console would send and receive.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

import orjson
from websockets.asyncio.client import ClientConnection, connect

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = (TRANSPORT_WS, LEGACY_WS)


class GraphQLWebSocket:
    """One connection; ``subscribe`` returns an operation id, ``next_payload`` its results."""

    def __init__(self, connection: ClientConnection, protocol: str) -> None:
        self.connection = connection
        self.protocol = protocol
        self._ids = itertools.count(1)
        self._results: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.closed: asyncio.Event = asyncio.Event()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        protocol: str = TRANSPORT_WS,
        *,
        init_payload: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncIterator[Self]:
        async with connect(url, subprotocols=[protocol], **options) as connection:  # type: ignore[list-item]
            client = cls(connection, protocol)
            await client._send({"type": "connection_init", "payload": init_payload or {}})
            while True:
                message = orjson.loads(await connection.recv())
                if message["type"] == "connection_ack":
                    break
                assert message["type"] == "ka", message
            client._reader = asyncio.create_task(client._read())
            try:
                yield client
            finally:
                client._reader.cancel()
                await asyncio.gather(client._reader, return_exceptions=True)

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        operation_id = str(next(self._ids))
        self._results[operation_id] = asyncio.Queue()
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        payload = {"query": query, "variables": variables or {}}
        await self._send({"id": operation_id, "type": kind, "payload": payload})
        return operation_id

    async def next_message(self, operation_id: str, within: float = 10.0) -> dict[str, Any]:
        """The next message for the operation: {"type": "next"|"data"|"error"|"complete", …}."""
        return await asyncio.wait_for(self._results[operation_id].get(), within)

    async def next_data(self, operation_id: str, within: float = 10.0) -> dict[str, Any]:
        message = await self.next_message(operation_id, within)
        assert message["type"] in ("next", "data"), message
        payload = message["payload"]
        assert not payload.get("errors"), payload
        return payload["data"]  # type: ignore[no-any-return]

    def pending(self, operation_id: str) -> int:
        return self._results[operation_id].qsize()

    def drain(self, operation_id: str) -> list[dict[str, Any]]:
        """The data of every result received so far, without waiting."""
        results = self._results[operation_id]
        drained = []
        while not results.empty():
            message = results.get_nowait()
            assert message["type"] in ("next", "data"), message
            drained.append(message["payload"]["data"])
        return drained

    def stop_reading(self) -> None:
        """Behave like a stalled client: leave everything the server sends unread."""
        if self._reader is not None:
            self._reader.cancel()

    async def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """A query over the same websocket: one result, then complete."""
        operation_id = await self.subscribe(query, variables)
        data = await self.next_data(operation_id)
        done = await self.next_message(operation_id)
        assert done["type"] == "complete", done
        return data

    async def _send(self, message: dict[str, Any]) -> None:
        await self.connection.send(orjson.dumps(message).decode())

    async def _read(self) -> None:
        try:
            async for raw in self.connection:
                message = orjson.loads(raw)
                if message.get("type") == "ping":
                    await self._send({"type": "pong"})
                    continue
                operation_id = message.get("id")
                if operation_id in self._results:
                    self._results[operation_id].put_nowait(message)
        finally:
            self.closed.set()
