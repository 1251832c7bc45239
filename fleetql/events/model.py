"""What travels between replicas: a small fact about one cluster, never the cluster itself.

PostgreSQL NOTIFY carries at most 8,000 bytes and a cluster row can be larger (labels,
descriptions), so an event names the cluster and what changed; every process loads the cluster
from the database once per event and shares that row among its subscribers.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Self

import orjson

__all__ = ["ClusterEvent", "EventKind", "InvalidEvent"]


class EventKind(enum.StrEnum):
    IMPORTED = "IMPORTED"
    STATE_CHANGED = "STATE_CHANGED"
    REMOVED = "REMOVED"


class InvalidEvent(ValueError):
    """A payload on the events channel that this version cannot read."""


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    """One committed change. ``changed_fields`` holds database column names."""

    kind: EventKind
    cluster_id: uuid.UUID
    status: str
    previous_status: str | None = None
    changed_fields: tuple[str, ...] = ()
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def encode(self) -> str:
        return orjson.dumps(
            {
                "v": 1,
                "kind": self.kind.value,
                "id": str(self.cluster_id),
                "status": self.status,
                "previous": self.previous_status,
                "changed": list(self.changed_fields),
                "at": self.at.isoformat(),
            }
        ).decode()

    @classmethod
    def decode(cls, payload: str) -> Self:
        try:
            data = orjson.loads(payload)
            if data.get("v") != 1:
                raise InvalidEvent(f"unknown event version {data.get('v')!r}")
            return cls(
                kind=EventKind(data["kind"]),
                cluster_id=uuid.UUID(data["id"]),
                status=str(data["status"]),
                previous_status=data["previous"],
                changed_fields=tuple(str(name) for name in data["changed"]),
                at=datetime.fromisoformat(data["at"]),
            )
        except InvalidEvent:
            raise
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
            raise InvalidEvent(f"unreadable event payload: {type(error).__name__}") from None
