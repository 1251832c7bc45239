"""Input types: what clients send."""

from __future__ import annotations

from datetime import datetime

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
    credential_expires_before: datetime | None = strawberry.field(
        default=None, description="Clusters whose credential expires before this time."
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


@strawberry.input(description="Only the fields given change.")
class UpdateClusterInput:
    name: str | None = None
    description: str | None = None
    labels: list[LabelInput] | None = strawberry.field(
        default=None, description="Replaces every label."
    )
    add_labels: list[LabelInput] = strawberry.field(
        default_factory=list, description="Added (or changed) after `labels` is applied."
    )
    remove_labels: list[str] = strawberry.field(
        default_factory=list, description="Keys removed after `labels` is applied."
    )
    kubeconfig: str | None = strawberry.field(
        default=None,
        description="A new kubeconfig (base64 or YAML), validated as on import; checked at once.",
    )
    context: str | None = strawberry.field(
        default=None, description="The context of the new kubeconfig to use."
    )
    expected_version: int | None = strawberry.field(
        default=None,
        description="Refuse the change (CONFLICT) unless the cluster is still at this version.",
    )


@strawberry.input(description="Every condition given must hold.")
class EventFilter:
    cluster_ids: list[strawberry.ID] | None = None
    types: list[ClusterEventType] | None = None
    since: datetime | None = None
    until: datetime | None = None
