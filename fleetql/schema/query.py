"""The Query root: reading the fleet from PostgreSQL."""

from __future__ import annotations

import strawberry
from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode, SelectionSetNode
from strawberry.types import Info

from fleetql.db.clusters import ClusterFilter as DbClusterFilter
from fleetql.db.clusters import OrderField, Ordering
from fleetql.resolvers import clusters, history, tokens
from fleetql.resolvers.arguments import parse_cluster_id
from fleetql.resolvers.context import Context
from fleetql.schema.enums import OrderDirection
from fleetql.schema.inputs import ClusterFilter, ClusterOrder, EventFilter
from fleetql.schema.permissions import ADMIN, VIEWER
from fleetql.schema.types import ApiToken, Cluster, ClusterPage, EventPage, FleetSummary


def _selects(info: Info[Context, None], name: str) -> bool:
    """Whether the client selected ``name`` directly on this field's result, fragments
    included (fields nested deeper do not count).

    Walks graphql-core's nodes: ``info.selected_fields`` would first convert the whole
    selection (every item field, with its arguments) into strawberry objects."""
    raw = info._raw_info
    fragments = raw.fragments

    def at_this_level(selection_set: SelectionSetNode | None) -> bool:
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                if selection.name.value == name:
                    return True
            elif isinstance(selection, InlineFragmentNode):
                if at_this_level(selection.selection_set):
                    return True
            elif isinstance(selection, FragmentSpreadNode):
                fragment = fragments.get(selection.name.value)
                if fragment is not None and at_this_level(fragment.selection_set):
                    return True
        return False

    return any(at_this_level(node.selection_set) for node in raw.field_nodes)


def cluster_filter_of(filter: ClusterFilter | None) -> DbClusterFilter:
    where = filter or ClusterFilter()
    return clusters.cluster_filter(
        statuses=where.status or (),
        search=where.search,
        labels=[(label.key, label.value) for label in where.labels or ()],
        label_selector=where.label_selector,
        credential_expires_before=where.credential_expires_before,
    )


@strawberry.type
class Query:
    @strawberry.field(
        permission_classes=VIEWER,
        description="A page of clusters matching the filter. `after` takes a page's "
        "pageInfo.endCursor (made with the same orderBy) instead of `page`: every page then "
        "costs what the first one does.",
    )
    async def clusters(
        self,
        info: Info[Context, None],
        filter: ClusterFilter | None = None,
        page: int = 1,
        limit: int = 20,
        order_by: ClusterOrder | None = None,
        after: strawberry.ID | None = None,
    ) -> ClusterPage:
        order = order_by or ClusterOrder()
        result = await clusters.list_clusters(
            info.context,
            where=cluster_filter_of(filter),
            page=page,
            limit=limit,
            after=None if after is None else str(after),
            ordering=Ordering(
                field=OrderField(order.field.value),
                descending=order.direction is OrderDirection.DESC,
            ),
            count=_selects(info, "total"),
        )
        return ClusterPage.from_result(result)

    @strawberry.field(
        permission_classes=VIEWER,
        description="One cluster, or null when the id is unknown or removed.",
    )
    async def cluster(self, info: Info[Context, None], id: strawberry.ID) -> Cluster | None:
        record = await clusters.get_cluster(info.context, parse_cluster_id(id))
        return None if record is None else Cluster.from_row(record)

    @strawberry.field(
        permission_classes=VIEWER,
        description="The event log, newest first; `after` takes a page's endCursor.",
    )
    async def events(
        self,
        info: Info[Context, None],
        filter: EventFilter | None = None,
        first: int = 20,
        after: strawberry.ID | None = None,
    ) -> EventPage:
        where = filter or EventFilter()
        page = await history.list_events(
            info.context,
            cluster_ids=[str(value) for value in where.cluster_ids or ()],
            types=where.types or (),
            since=where.since,
            until=where.until,
            first=first,
            after=None if after is None else str(after),
        )
        return EventPage.from_result(page)

    @strawberry.field(
        permission_classes=VIEWER,
        description="The dashboard header: totals by status and version, nodes and capacity.",
    )
    async def fleet_summary(
        self, info: Info[Context, None], filter: ClusterFilter | None = None
    ) -> FleetSummary:
        result = await clusters.fleet_summary(info.context, where=cluster_filter_of(filter))
        return FleetSummary.from_result(result)

    @strawberry.field(
        permission_classes=ADMIN,
        description="API tokens, newest first (a scoped admin sees the ones it created).",
    )
    async def api_tokens(self, info: Info[Context, None]) -> list[ApiToken]:
        return [ApiToken.from_result(token) for token in await tokens.list_api_tokens(info.context)]
