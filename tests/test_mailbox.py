"""The Mailbox: asyncio.Queue's behaviour for one consumer, holding nothing while empty."""

from __future__ import annotations

import asyncio
import sys

import pytest

from fleetql.mailbox import Mailbox


async def test_items_come_out_in_order_and_a_waiting_get_wakes_on_put() -> None:
    mailbox: Mailbox[int] = Mailbox()
    waiting = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    mailbox.put_nowait(1)
    mailbox.put_nowait(2)
    assert await asyncio.wait_for(waiting, 10) == 1
    assert mailbox.qsize() == 1
    assert await mailbox.get() == 2
    assert mailbox.empty()
    with pytest.raises(asyncio.QueueEmpty):
        mailbox.get_nowait()


async def test_a_bounded_mailbox_refuses_past_its_size() -> None:
    mailbox: Mailbox[str] = Mailbox(maxsize=2)
    mailbox.put_nowait("a")
    mailbox.put_nowait("b")
    with pytest.raises(asyncio.QueueFull):
        mailbox.put_nowait("c")
    assert mailbox.get_nowait() == "a"
    mailbox.put_nowait("c")
    assert [mailbox.get_nowait(), mailbox.get_nowait()] == ["b", "c"]


async def test_a_cancelled_get_loses_nothing() -> None:
    mailbox: Mailbox[int] = Mailbox()
    waiting = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    mailbox.put_nowait(7)
    assert await asyncio.wait_for(mailbox.get(), 10) == 7


async def test_a_second_consumer_is_refused() -> None:
    mailbox: Mailbox[int] = Mailbox()
    first = asyncio.create_task(mailbox.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one consumer"):
        await mailbox.get()
    mailbox.put_nowait(1)
    assert await asyncio.wait_for(first, 10) == 1


def test_an_empty_mailbox_is_smaller_than_an_empty_queue() -> None:
    """The point of it: an idle subscriber's queue costs bytes, not kilobytes."""
    mailbox: Mailbox[int] = Mailbox(maxsize=10)
    mailbox.put_nowait(1)
    mailbox.get_nowait()  # drained: the deque is gone again
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=10)
    queue_bytes = sys.getsizeof(queue.__dict__) + sum(
        sys.getsizeof(value) for value in vars(queue).values()
    )
    mailbox_bytes = sys.getsizeof(mailbox) + sum(
        sys.getsizeof(getattr(mailbox, name)) for name in Mailbox.__slots__
    )
    assert mailbox_bytes * 4 < queue_bytes
