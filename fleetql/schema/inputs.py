"""Input types: what clients send."""

from __future__ import annotations

import strawberry

from fleetql.schema.enums import (
    ClusterEventType,
    ClusterOrderField,
    ClusterStatus,
    OrderDirection,
)


@strawberry.input
class LabelInput:
    key: str
    value: str


@strawberry.input(description="Every condition given must hold.")
class ClusterFilter:
    status: list[ClusterStatus] | None = None
    search: str | None = strawberry.field(
        default=None,
        description="Case-insensitive substring of the name or description; % and _ are literal.",
    )
    labels: list[LabelInput] | None = strawberry.field(
        default=None, description="Clusters carrying all of these labels."
    )
    label_selector: str | None = strawberry.field(
        default=None,
        description="kubectl syntax: env=prod,tier!=db,region in (sh,bj),!deprecated,team",
    )


@strawberry.input(description="Every condition given must hold; with none, every cluster.")
class ClusterEventFilter:
    ids: list[strawberry.ID] | None = None
    labels: list[LabelInput] | None = strawberry.field(
        default=None, description="Clusters carrying all of these labels."
    )
    label_selector: str | None = strawberry.field(
        default=None,
        description="kubectl syntax: env=prod,tier!=db,region in (sh,bj),!deprecated,team",
    )
    status: list[ClusterStatus] | None = strawberry.field(
        default=None,
        description="Events whose status or previous status is one of these.",
    )
    types: list[ClusterEventType] | None = strawberry.field(
        default=None, description="Events of these types."
    )


@strawberry.input
class ClusterOrder:
    field: ClusterOrderField = ClusterOrderField.NAME
    direction: OrderDirection = OrderDirection.ASC


@strawberry.input
class ImportClusterInput:
    name: str = strawberry.field(description="A DNS-1123 label, at most 63 characters.")
    kubeconfig: str = strawberry.field(
        description="The kubeconfig file, base64-encoded (raw YAML text is accepted too)."
    )
    description: str = ""
    context: str | None = strawberry.field(
        default=None, description="The context to use; the file's current-context by default."
    )
    labels: list[LabelInput] = strawberry.field(default_factory=list)
