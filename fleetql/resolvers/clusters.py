"""Reading the fleet: lists with filters and pages, and one cluster by id."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from fleetql.db import clusters as db
from fleetql.db import summary
from fleetql.db.models import ClusterStatus
from fleetql.db.summary import FleetSummary
from fleetql.resolvers.arguments import parse_selector, required_labels
from fleetql.resolvers.context import Context
from fleetql.resolvers.errors import InvalidArgument

DEFAULT_ORDERING = db.Ordering()


@dataclass(frozen=True)
class ClusterPage:
    total: int | None  # None when the caller did not ask for it
    page: int
    limit: int
    items: list[db.ClusterRecord]
    end_cursor: str | None = None  # where the page ended, for ``after``
    has_next_page: bool = False


def encode_cursor(record: db.ClusterRecord, ordering: db.Ordering) -> str:
    """An opaque ``after`` value: the ordering it belongs to, the record's sort key and id."""
    key = db.sort_key_of(record, ordering.field)
    document = {
        "o": ordering.field.value,
        "d": ordering.descending,
        "k": key.isoformat() if isinstance(key, datetime) else key,
        "i": str(record.id),
    }
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode()


def decode_cursor(cursor: str, ordering: db.Ordering) -> db.Keyset:
    """The keyset ``cursor`` stands for, or an error naming ``after``."""
    try:
        document = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        field, descending, key = document["o"], document["d"], document["k"]
        cluster_id = uuid.UUID(document["i"])
    except (ValueError, TypeError, KeyError, UnicodeError):
        raise InvalidArgument("after", "not a cursor this API gave out (use endCursor)") from None
    if (field, descending) != (ordering.field.value, ordering.descending):
        raise InvalidArgument(
            "after", "the cursor belongs to another orderBy; page with the one it came from"
        )
    expected: tuple[type, ...] = _KEY_TYPES[ordering.field]
    if not isinstance(key, expected) or isinstance(key, bool):
        raise InvalidArgument("after", "not a cursor this API gave out (use endCursor)")
    if ordering.field is db.OrderField.CREATED_AT:
        try:
            key = datetime.fromisoformat(str(key))
        except ValueError:
            raise InvalidArgument("after", "not a cursor this API gave out") from None
        if key.tzinfo is None:
            raise InvalidArgument("after", "not a cursor this API gave out (use endCursor)")
    return db.Keyset(key=key, id=cluster_id)


# What a cursor's key may be for each ordering (a node count is null for clusters without one).
_KEY_TYPES: dict[db.OrderField, tuple[type, ...]] = {
    db.OrderField.NAME: (str,),
    db.OrderField.CREATED_AT: (str,),
    db.OrderField.STATUS: (int,),
    db.OrderField.NODE_COUNT: (int, type(None)),
}


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
    return db.ClusterFilter(
        statuses=tuple(statuses),
        search=search or None,
        labels=required_labels(labels),
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
    after: str | None = None,
) -> ClusterPage:
    max_limit = context.services.settings.cluster_manager.max_page_size
    if page < 1:
        raise InvalidArgument("page", "must be 1 or more")
    if not 0 <= limit <= max_limit:
        raise InvalidArgument("limit", f"must be between 0 and {max_limit}")
    keyset = None
    if after is not None:
        if page != 1:
            raise InvalidArgument("page", "cannot be combined with after (pages follow a cursor)")
        keyset = decode_cursor(after, ordering)
    if where is None:
        where = cluster_filter(
            statuses=statuses, search=search, labels=labels, label_selector=label_selector
        )
    where = replace(where, scope=context.scope())
    # One more than the page: whether it exists is hasNextPage.
    total, items = await context.read(
        db.list_clusters,
        where,
        ordering=ordering,
        offset=(page - 1) * limit,
        limit=limit + 1,
        count=count,
        after=keyset,
    )
    items, more = items[:limit], items[limit:]
    return ClusterPage(
        total=total,
        page=page,
        limit=limit,
        items=items,
        end_cursor=encode_cursor(items[-1], ordering) if items else None,
        has_next_page=bool(more),
    )


async def fleet_summary(context: Context, *, where: db.ClusterFilter) -> FleetSummary:
    warning = context.services.settings.cluster_manager.credential_expiry_warning
    where = replace(where, scope=context.scope())
    return await context.read(
        summary.fleet_summary, where, expiring_before=datetime.now(UTC) + warning
    )


async def get_cluster(context: Context, cluster_id: uuid.UUID) -> db.ClusterRecord | None:
    return await context.read(db.get_cluster, cluster_id, scope=context.scope())
