"""Object types: what clients read."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import lru_cache
from typing import Self

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from fleetql.db.clusters import ClusterRecord
from fleetql.db.events import LoggedEvent
from fleetql.db.summary import FleetSummary as FleetSummaryResult
from fleetql.db.tokens import ApiToken as ApiTokenResult
from fleetql.events.bus import Delivery
from fleetql.resolvers import history
from fleetql.resolvers.clusters import ClusterPage as ClusterPageResult
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import UserError as UserErrorResult
from fleetql.resolvers.history import HistoryPage
from fleetql.resolvers.lifecycle import LifecycleResult
from fleetql.resolvers.tokens import TokenResult
from fleetql.schema.enums import ClusterEventKind, ClusterEventType, ClusterStatus, Role
from fleetql.schema.scalars import Long


@strawberry.type
class Label:
    key: str
    value: str


@strawberry.type(description="Why the last check of a cluster failed.")
class CheckError:
    code: str
    message: str


@strawberry.type(description="What the stored credential is; never the credential itself.")
class Credential:
    kind: str = strawberry.field(description="TOKEN, CLIENT_CERTIFICATE or BASIC.")
    expires_at: datetime | None = strawberry.field(
        description="A client certificate's notAfter, or a JWT token's exp; null when unknown."
    )
    subject: str | None = strawberry.field(description="Who the cluster sees, when known.")


@strawberry.type(description="Time spent in each status over a window.")
class AvailabilityFigures:
    ratio: float | None = strawberry.field(
        description="HEALTHY time over known time (DEGRADED counts against it); null if unknown."
    )
    healthy_seconds: float
    degraded_seconds: float
    unhealthy_seconds: float
    unreachable_seconds: float
    unknown_seconds: float
    transitions: int


@strawberry.type(description="An imported Kubernetes cluster and its latest known state.")
class Cluster:
    id: strawberry.ID
    name: str
    description: str
    labels: list[Label]
    api_server_url: str
    status: ClusterStatus
    node_count: int | None
    ready_node_count: int | None
    cpu_capacity_cores: float | None
    cpu_allocatable_cores: float | None
    cpu_usage_cores: float | None = strawberry.field(
        description="Null when the cluster serves no metrics.k8s.io API."
    )
    memory_capacity_bytes: Long | None
    memory_allocatable_bytes: Long | None
    memory_usage_bytes: Long | None = strawberry.field(
        description="Null when the cluster serves no metrics.k8s.io API."
    )
    kubernetes_version: str | None
    last_heartbeat_at: datetime | None = strawberry.field(
        description="When a check last succeeded."
    )
    last_checked_at: datetime | None
    last_error: CheckError | None
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime
    version: int = strawberry.field(
        description="Goes up by one with every change; pass it as expectedVersion to update."
    )
    credential: Credential | None
    pending_status: ClusterStatus | None = strawberry.field(
        description="A status seen but not yet held long enough to be the status."
    )

    @strawberry.field(
        description=(
            "How much of the window (24h, 7d, 30d; any <n>m, <n>h or <n>d up to 90d) the "
            "cluster was HEALTHY, from its status history. Time before import or not yet "
            "checked is unknown and left out of the ratio."
        )
    )
    async def availability(
        self, info: Info[Context, None], window: str = "24h"
    ) -> AvailabilityFigures:
        figures = await history.cluster_availability(
            info.context, uuid.UUID(str(self.id)), window=window
        )
        return AvailabilityFigures(
            ratio=figures.ratio,
            healthy_seconds=figures.healthy_seconds,
            degraded_seconds=figures.degraded_seconds,
            unhealthy_seconds=figures.unhealthy_seconds,
            unreachable_seconds=figures.unreachable_seconds,
            unknown_seconds=figures.unknown_seconds,
            transitions=figures.transitions,
        )

    @strawberry.field(
        description=(
            "The status changed more often in the last hour than "
            "cluster_manager.flapping_threshold."
        )
    )
    async def flapping(self, info: Info[Context, None]) -> bool:
        return await history.cluster_is_flapping(info.context, uuid.UUID(str(self.id)))

    @strawberry.field(description="This cluster's event log, newest first.")
    async def events(
        self,
        info: Info[Context, None],
        first: int = 20,
        after: strawberry.ID | None = None,
    ) -> EventPage:
        page = await history.list_events(
            info.context,
            cluster_ids=[str(self.id)],
            first=first,
            after=None if after is None else str(after),
        )
        return EventPage.from_result(page)

    @classmethod
    def from_row(cls, row: ClusterRecord) -> Self:
        def cores(value: object) -> float | None:
            return None if value is None else float(value)  # type: ignore[arg-type]

        return cls(
            id=_id_of(row.id),
            name=row.name,
            description=row.description,
            labels=[Label(key=key, value=value) for key, value in sorted(row.labels.items())],
            api_server_url=row.api_server_url,
            status=row.status,
            node_count=row.node_count,
            ready_node_count=row.ready_node_count,
            cpu_capacity_cores=cores(row.cpu_capacity_cores),
            cpu_allocatable_cores=cores(row.cpu_allocatable_cores),
            cpu_usage_cores=cores(row.cpu_usage_cores),
            memory_capacity_bytes=row.memory_capacity_bytes,  # type: ignore[arg-type]
            memory_allocatable_bytes=row.memory_allocatable_bytes,  # type: ignore[arg-type]
            memory_usage_bytes=row.memory_usage_bytes,  # type: ignore[arg-type]
            kubernetes_version=row.kubernetes_version,
            last_heartbeat_at=row.last_heartbeat_at,
            last_checked_at=row.last_checked_at,
            last_error=(
                CheckError(code=row.last_error_code, message=row.last_error_message or "")
                if row.last_error_code
                else None
            ),
            consecutive_failures=row.consecutive_failures,
            created_at=row.created_at,
            updated_at=row.updated_at,
            version=row.version,
            credential=None
            if row.credential_kind is None
            else Credential(
                kind=row.credential_kind,
                expires_at=row.credential_expires_at,
                subject=row.credential_subject,
            ),
            pending_status=_status(row.pending_status),
        )


@strawberry.type
class ClusterPage:
    total: int = strawberry.field(
        description="How many clusters match; counted only when asked for (it costs more "
        "than the page at 100,000 clusters)."
    )
    page: int
    limit: int
    items: list[Cluster]
    page_info: PageInfo

    @classmethod
    def from_result(cls, result: ClusterPageResult) -> Self:
        return cls(
            total=-1 if result.total is None else result.total,
            page=result.page,
            limit=result.limit,
            items=[Cluster.from_row(row) for row in result.items],
            page_info=PageInfo(
                end_cursor=None if result.end_cursor is None else strawberry.ID(result.end_cursor),
                has_next_page=result.has_next_page,
            ),
        )


@strawberry.type(description="A problem with a mutation's input; `code` is stable.")
class UserError:
    field: str
    code: str
    message: str

    @classmethod
    def from_result(cls, error: UserErrorResult) -> Self:
        return cls(field=error.field, code=error.code, message=error.message)


@strawberry.type
class ImportClusterPayload:
    cluster: Cluster | None
    user_errors: list[UserError]


@strawberry.type(description="One field's change; values as JSON (CPU in cores as a string).")
class FieldChange:
    field: str
    old: JSON | None
    new: JSON | None


def _event_cluster(root: ClusterEvent) -> Cluster | None:
    return None if root.record is None else Cluster.from_row(root.record)


@strawberry.type(description="A committed change to one cluster, as the event log holds it.")
class ClusterEvent:
    id: strawberry.ID = strawberry.field(
        description="The event log's id: pass it as `after` to resume from here."
    )
    type: ClusterEventType
    kind: ClusterEventKind
    cluster_id: strawberry.ID
    cluster: Cluster | None = strawberry.field(
        resolver=_event_cluster,
        description=(
            "The cluster as stored when this event was delivered: never older than the change "
            "the event reports. Null once the cluster is removed."
        ),
    )
    previous_status: ClusterStatus | None = strawberry.field(description="Null for an import.")
    status: ClusterStatus | None
    changed_fields: list[str] = strawberry.field(
        description="Names of the Cluster fields that changed, e.g. status, readyNodeCount."
    )
    changes: list[FieldChange]
    message: str
    actor: str | None
    at: datetime = strawberry.field(description="When the change was committed.")
    # Built into a Cluster only when selected: most event streams and pages do not ask for it.
    record: strawberry.Private[ClusterRecord | None] = None

    @classmethod
    def from_event(cls, event: LoggedEvent, cluster: ClusterRecord | None) -> Self:
        return cls(
            id=strawberry.ID(str(event.id)),
            type=event.type,
            kind=_KINDS[event.type],
            cluster_id=_id_of(event.cluster_id),
            record=cluster,
            previous_status=_status(event.previous_status),
            status=_status(event.status),
            changed_fields=list(dict.fromkeys(map(_cluster_field, event.changes))),
            changes=[
                FieldChange(field=_camel(name), old=old, new=new)
                for name, (old, new) in event.changes.items()
            ],
            message=event.message,
            actor=event.actor,
            at=event.at,
        )

    @classmethod
    def from_delivery(cls, delivery: Delivery) -> Self:
        return cls.from_event(delivery.event, delivery.cluster)


# An event page or a replay converts the same few names again and again (per event, per change).
_KINDS = {event_type: ClusterEventKind.of(event_type) for event_type in ClusterEventType}


@lru_cache(maxsize=256)
def _cluster_field(name: str) -> str:
    """A stored column as the Cluster type names it; both error columns are lastError."""
    return "lastError" if name.startswith("last_error_") else _camel(name)


@lru_cache(maxsize=256)
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


@lru_cache(maxsize=8192)
def _id_of(cluster_id: uuid.UUID) -> strawberry.ID:
    """A cluster's id as clients see it. Formatting a UUID costs more than the rest of a list
    item's fields, and pages and events name the same clusters again and again."""
    return strawberry.ID(str(cluster_id))


_STATUSES = {status.value: status for status in ClusterStatus}


def _status(value: str | None) -> ClusterStatus | None:
    if value is None:
        return None
    status = _STATUSES.get(value)
    return ClusterStatus(value) if status is None else status


@strawberry.type
class PageInfo:
    end_cursor: strawberry.ID | None = strawberry.field(
        description="Pass as `after` for the next page (of events: the next older one)."
    )
    has_next_page: bool


@strawberry.type(description="Events, newest first.")
class EventPage:
    items: list[ClusterEvent]
    page_info: PageInfo

    @classmethod
    def from_result(cls, page: HistoryPage) -> Self:
        items = [ClusterEvent.from_event(event, None) for event in page.events]
        return cls(
            items=items,
            page_info=PageInfo(
                end_cursor=items[-1].id if items else None, has_next_page=page.has_more
            ),
        )


@strawberry.type
class ClusterPayload:
    cluster: Cluster | None
    user_errors: list[UserError]

    @classmethod
    def from_result(cls, result: LifecycleResult) -> Self:
        return cls(
            cluster=None if result.cluster is None else Cluster.from_row(result.cluster),
            user_errors=[UserError.from_result(error) for error in result.user_errors],
        )


@strawberry.type
class ClustersPayload:
    clusters: list[Cluster]
    user_errors: list[UserError]

    @classmethod
    def from_result(cls, result: LifecycleResult) -> Self:
        return cls(
            clusters=[Cluster.from_row(row) for row in result.clusters],
            user_errors=[UserError.from_result(error) for error in result.user_errors],
        )


@strawberry.type
class StatusCount:
    status: ClusterStatus
    clusters: int


@strawberry.type
class VersionCount:
    minor_version: str | None = strawberry.field(description="e.g. v1.28; null: not known yet.")
    clusters: int


@strawberry.type(description="Totals over the clusters matching the filter.")
class FleetSummary:
    clusters: int
    by_status: list[StatusCount]
    by_minor_version: list[VersionCount]
    nodes: int
    ready_nodes: int
    cpu_capacity_cores: float
    cpu_allocatable_cores: float
    memory_capacity_bytes: Long
    memory_allocatable_bytes: Long
    credentials_expiring: int = strawberry.field(
        description="Credentials expiring within cluster_manager.credential_expiry_warning."
    )

    @classmethod
    def from_result(cls, summary: FleetSummaryResult) -> Self:
        return cls(
            clusters=summary.clusters,
            by_status=[
                StatusCount(status=ClusterStatus(status), clusters=count)
                for status, count in sorted(summary.by_status.items())
            ],
            by_minor_version=[
                VersionCount(minor_version=version, clusters=count)
                for version, count in sorted(
                    summary.by_minor_version.items(), key=lambda item: item[0] or ""
                )
            ],
            nodes=summary.nodes,
            ready_nodes=summary.ready_nodes,
            cpu_capacity_cores=float(summary.cpu_capacity_cores),
            cpu_allocatable_cores=float(summary.cpu_allocatable_cores),
            memory_capacity_bytes=summary.memory_capacity_bytes,  # type: ignore[arg-type]
            memory_allocatable_bytes=summary.memory_allocatable_bytes,  # type: ignore[arg-type]
            credentials_expiring=summary.credentials_expiring,
        )


@strawberry.type
class ResyncClustersPayload:
    queued: int = strawberry.field(description="How many clusters will be checked now.")


@strawberry.type(description="An API token for scripts and CI. Its secret is shown only once.")
class ApiToken:
    id: strawberry.ID
    name: str
    role: Role
    scope: str | None = strawberry.field(description="The label selector it is limited to.")
    created_by: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = strawberry.field(
        description="When it was last used (to the minute)."
    )
    revoked_at: datetime | None

    @classmethod
    def from_result(cls, token: ApiTokenResult) -> Self:
        return cls(
            id=strawberry.ID(str(token.id)),
            name=token.name,
            role=Role(token.role),
            scope=token.scope,
            created_by=token.created_by,
            created_at=token.created_at,
            expires_at=token.expires_at,
            last_used_at=token.last_used_at,
            revoked_at=token.revoked_at,
        )


@strawberry.type
class CreateApiTokenPayload:
    token: ApiToken | None
    secret: str | None = strawberry.field(
        description="Send as 'Authorization: Bearer <secret>'. Returned now and never again."
    )
    user_errors: list[UserError]

    @classmethod
    def from_result(cls, result: TokenResult) -> Self:
        return cls(
            token=None if result.token is None else ApiToken.from_result(result.token),
            secret=result.secret,
            user_errors=[UserError.from_result(error) for error in result.user_errors],
        )


@strawberry.type
class RevokeApiTokenPayload:
    token: ApiToken | None
    user_errors: list[UserError]

    @classmethod
    def from_result(cls, result: TokenResult) -> Self:
        return cls(
            token=None if result.token is None else ApiToken.from_result(result.token),
            user_errors=[UserError.from_result(error) for error in result.user_errors],
        )
