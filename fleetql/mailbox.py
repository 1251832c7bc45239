"""A queue for one consumer that holds no memory while it is empty.

Every websocket subscriber had two ``asyncio.Queue``s (its event subscription's and uvicorn's
receive queue), and an ``asyncio.Queue`` is four ``deque``s of 760 bytes each, allocated up
front: 6 KiB of a subscriber's ~50 KiB, for queues that are empty nearly all the time. A
``Mailbox`` allocates its ``deque`` with the first item, drops it when drained and wakes its
single consumer with one future.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Mailbox"]

T = TypeVar("T")


class Mailbox(Generic[T]):
    """FIFO with ``asyncio.Queue``'s ``put_nowait``/``get_nowait``/``get``/``qsize``/``empty``
    (``QueueFull`` past ``maxsize`` when it is > 0), for one consumer at a time."""

    __slots__ = ("_items", "_waiter", "maxsize")

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._items: deque[T] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return 0 if self._items is None else len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: T) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        elif 0 < self.maxsize <= len(items):
            raise asyncio.QueueFull
        items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> T:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> T:
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("a Mailbox has one consumer: another get() is waiting")
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self.get_nowait()
