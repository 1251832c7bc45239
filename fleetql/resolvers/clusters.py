"""Reading the fleet: lists with filters and pages, and one cluster by id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from fleetql.db import clusters as db
from fleetql.db import summary
from fleetql.db.models import ClusterStatus
from fleetql.db.summary import FleetSummary
from fleetql.resolvers.arguments import check_label_keys, parse_selector
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import InvalidArgument

DEFAULT_ORDERING = db.Ordering()


@dataclass(frozen=True)
class ClusterPage:
    total: int | None  # None when the caller did not ask for it
    page: int
    limit: int
    items: list[db.ClusterRecord]


def cluster_filter(
    *,
    statuses: Sequence[ClusterStatus] = (),
    search: str | None = None,
    labels: Sequence[tuple[str, str]] = (),
    label_selector: str | None = None,
    credential_expires_before: datetime | None = None,
) -> db.ClusterFilter:
    """A client's filter, validated, naming the argument at fault."""
    selector = parse_selector(label_selector)
    check_label_keys(labels)
    label_map: dict[str, str] = {}
    for index, (key, value) in enumerate(labels):
        if key in label_map and label_map[key] != value:
            # Both cannot hold at once; say so rather than quietly returning nothing.
            raise InvalidArgument(f"filter.labels[{index}]", f"label {key!r} is given twice")
        label_map[key] = value
    return db.ClusterFilter(
        statuses=tuple(statuses),
        search=search or None,
        labels=label_map,
        selector=selector,
        credential_expires_before=credential_expires_before,
    )


async def list_clusters(
    context: Context,
    *,
    where: db.ClusterFilter | None = None,
    statuses: Sequence[ClusterStatus] = (),
    search: str | None = None,
    labels: Sequence[tuple[str, str]] = (),
    label_selector: str | None = None,
    page: int = 1,
    limit: int = 20,
    ordering: db.Ordering = DEFAULT_ORDERING,
    count: bool = True,
) -> ClusterPage:
    max_limit = context.services.settings.cluster_manager.max_page_size
    if page < 1:
        raise InvalidArgument("page", "must be 1 or more")
    if not 0 <= limit <= max_limit:
        raise InvalidArgument("limit", f"must be between 0 and {max_limit}")
    if where is None:
        where = cluster_filter(
            statuses=statuses, search=search, labels=labels, label_selector=label_selector
        )
    where = replace(where, scope=context.scope())
    total, items = await context.read(
        db.list_clusters,
        where,
        ordering=ordering,
        offset=(page - 1) * limit,
        limit=limit,
        count=count,
    )
    return ClusterPage(total=total, page=page, limit=limit, items=items)


async def fleet_summary(context: Context, *, where: db.ClusterFilter) -> FleetSummary:
    warning = context.services.settings.cluster_manager.credential_expiry_warning
    where = replace(where, scope=context.scope())
    return await context.read(
        summary.fleet_summary, where, expiring_before=datetime.now(UTC) + warning
    )


async def get_cluster(context: Context, cluster_id: uuid.UUID) -> db.ClusterRecord | None:
    return await context.read(db.get_cluster, cluster_id, scope=context.scope())
