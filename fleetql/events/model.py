"""What travels between replicas: the ids of logged events, never the events themselves.

The event log in PostgreSQL is the truth; a notification only says "these ids are ready". Each
process loads the events and their clusters once per batch and shares them among its
subscribers, and NOTIFY's 8,000-byte limit is never near.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

__all__ = ["MAX_IDS_PER_MESSAGE", "InvalidEvent", "decode_ids", "encode_ids"]

# 200 ids of up to 19 digits stay far below NOTIFY's 8,000 bytes.
MAX_IDS_PER_MESSAGE = 200


class InvalidEvent(ValueError):
    """A payload on the events channel that this version cannot read."""


def encode_ids(ids: Sequence[int]) -> str:
    if not ids or len(ids) > MAX_IDS_PER_MESSAGE:
        raise ValueError(f"a message carries 1 to {MAX_IDS_PER_MESSAGE} ids, not {len(ids)}")
    return orjson.dumps({"v": 2, "ids": list(ids)}).decode()


def decode_ids(payload: str) -> list[int]:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidEvent("unreadable event payload") from None
    if not isinstance(data, dict) or data.get("v") != 2:
        raise InvalidEvent("unknown event payload version")
    ids = data.get("ids")
    if not isinstance(ids, list) or not all(type(i) is int and i > 0 for i in ids):
        raise InvalidEvent("event payload without a list of ids")
    return ids
