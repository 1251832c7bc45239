"""Reading the fleet: lists with filters and pages, and one cluster by id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from fleetql.db import clusters as db
from fleetql.db.models import ClusterStatus
from fleetql.labels import LabelError, SelectorError, parse_label_selector, validate_label_key
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import InvalidArgument

DEFAULT_ORDERING = db.Ordering()


@dataclass(frozen=True)
class ClusterPage:
    total: int
    page: int
    limit: int
    items: list[db.ClusterRecord]


async def list_clusters(
    context: Context,
    *,
    statuses: Sequence[ClusterStatus] = (),
    search: str | None = None,
    labels: Sequence[tuple[str, str]] = (),
    label_selector: str | None = None,
    page: int = 1,
    limit: int = 20,
    ordering: db.Ordering = DEFAULT_ORDERING,
) -> ClusterPage:
    max_limit = context.services.settings.cluster_manager.max_page_size
    if page < 1:
        raise InvalidArgument("page", "must be 1 or more")
    if not 0 <= limit <= max_limit:
        raise InvalidArgument("limit", f"must be between 0 and {max_limit}")
    try:
        selector = parse_label_selector(label_selector or "")
    except SelectorError as error:
        raise InvalidArgument("filter.labelSelector", str(error)) from None
    label_map: dict[str, str] = {}
    for index, (key, value) in enumerate(labels):
        try:
            validate_label_key(key)
        except LabelError as error:
            raise InvalidArgument(f"filter.labels[{index}].key", str(error)) from None
        if key in label_map and label_map[key] != value:
            # Both cannot hold at once; say so rather than quietly returning nothing.
            raise InvalidArgument(f"filter.labels[{index}]", f"label {key!r} is given twice")
        label_map[key] = value
    where = db.ClusterFilter(
        statuses=tuple(statuses),
        search=search or None,
        labels=label_map,
        selector=selector,
    )
    async with context.services.sessions() as session:
        total, items = await db.list_clusters(
            session, where, ordering=ordering, offset=(page - 1) * limit, limit=limit
        )
    return ClusterPage(total=total, page=page, limit=limit, items=items)


async def get_cluster(context: Context, cluster_id: uuid.UUID) -> db.ClusterRecord | None:
    async with context.services.sessions() as session:
        return await db.get_cluster(session, cluster_id)
