"""Enums as GraphQL sees them."""

from __future__ import annotations

import enum
from typing import TypeAlias

import strawberry

from fleetql.db.clusters import OrderField
from fleetql.db.models import ClusterStatus as StoredStatus
from fleetql.db.models import EventType

# The stored enum is the GraphQL enum too: one list of statuses, registered with strawberry here.
strawberry.enum(
    StoredStatus, name="ClusterStatus", description="A cluster's health as the last check saw it."
)
ClusterStatus: TypeAlias = StoredStatus


@strawberry.enum(description="What a list of clusters is sorted by; ties are broken by id.")
class ClusterOrderField(enum.Enum):
    NAME = OrderField.NAME.value
    CREATED_AT = OrderField.CREATED_AT.value
    STATUS = OrderField.STATUS.value
    NODE_COUNT = OrderField.NODE_COUNT.value


@strawberry.enum
class OrderDirection(enum.Enum):
    ASC = "asc"
    DESC = "desc"


strawberry.enum(
    EventType,
    name="ClusterEventType",
    description="What an entry of the event log records.",
)
ClusterEventType: TypeAlias = EventType


@strawberry.enum(description="The coarse kind of an event: a lifecycle step or a state change.")
class ClusterEventKind(enum.Enum):
    IMPORTED = "IMPORTED"
    UPDATED = "UPDATED"
    REMOVED = "REMOVED"
    STATE_CHANGED = "STATE_CHANGED"

    @classmethod
    def of(cls, event_type: EventType) -> ClusterEventKind:
        try:
            return cls(event_type.value)
        except ValueError:
            return cls.STATE_CHANGED


@strawberry.enum(description="What a principal may do: each role includes the ones before it.")
class Role(enum.Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
