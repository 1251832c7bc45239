"""The Mutation root: changing the fleet."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.types import Info

from fleetql.resolvers import imports, lifecycle, tokens
from fleetql.resolvers.arguments import parse_cluster_id, parse_cluster_ids
from fleetql.resolvers.context import Context
from fleetql.schema.enums import Role
from fleetql.schema.inputs import (
    ClusterFilter,
    ImportClusterInput,
    LabelInput,
    UpdateClusterInput,
)
from fleetql.schema.permissions import ADMIN, OPERATOR
from fleetql.schema.query import cluster_filter_of
from fleetql.schema.types import (
    Cluster,
    ClusterPayload,
    ClustersPayload,
    CreateApiTokenPayload,
    ImportClusterPayload,
    ResyncClustersPayload,
    RevokeApiTokenPayload,
    UserError,
)


@strawberry.type
class Mutation:
    @strawberry.mutation(
        permission_classes=OPERATOR,
        description="Import a cluster by kubeconfig. Expected failures come back in userErrors.",
    )
    async def import_cluster(
        self, info: Info[Context, None], input: ImportClusterInput
    ) -> ImportClusterPayload:
        result = await imports.import_cluster(
            info.context,
            name=input.name,
            kubeconfig=input.kubeconfig,
            description=input.description,
            kube_context=input.context,
            labels=[(label.key, label.value) for label in input.labels],
        )
        return ImportClusterPayload(
            cluster=None if result.cluster is None else Cluster.from_row(result.cluster),
            user_errors=[UserError.from_result(error) for error in result.user_errors],
        )

    @strawberry.mutation(
        permission_classes=OPERATOR,
        description=(
            "Change a cluster's name, description, labels or kubeconfig. Every field is "
            "optional; with expectedVersion the change is refused (CONFLICT) if the cluster "
            "changed meanwhile. A failed update changes nothing."
        ),
    )
    async def update_cluster(
        self, info: Info[Context, None], id: strawberry.ID, input: UpdateClusterInput
    ) -> ClusterPayload:
        result = await lifecycle.update_cluster(
            info.context,
            parse_cluster_id(id),
            lifecycle.ClusterUpdate(
                name=input.name,
                description=input.description,
                labels=None
                if input.labels is None
                else [(label.key, label.value) for label in input.labels],
                add_labels=[(label.key, label.value) for label in input.add_labels],
                remove_labels=input.remove_labels,
                kubeconfig=input.kubeconfig,
                context=input.context,
                expected_version=input.expected_version,
            ),
        )
        return ClusterPayload.from_result(result)

    @strawberry.mutation(
        permission_classes=ADMIN,
        description=(
            "Remove a cluster: it is no longer checked or listed, its name is free, and its "
            "kubeconfig is erased. Its event history stays. Returns it as it was."
        ),
    )
    async def remove_cluster(self, info: Info[Context, None], id: strawberry.ID) -> ClusterPayload:
        result = await lifecycle.remove_cluster(info.context, parse_cluster_id(id))
        return ClusterPayload.from_result(result)

    @strawberry.mutation(
        permission_classes=OPERATOR,
        description="Relabel many clusters in one transaction: all or none.",
    )
    async def set_cluster_labels(
        self,
        info: Info[Context, None],
        ids: list[strawberry.ID],
        add: list[LabelInput] | None = None,
        remove: list[str] | None = None,
    ) -> ClustersPayload:
        result = await lifecycle.set_cluster_labels(
            info.context,
            parse_cluster_ids([str(value) for value in ids], "ids"),
            add=[(label.key, label.value) for label in add or ()],
            remove=remove or (),
        )
        return ClustersPayload.from_result(result)

    @strawberry.mutation(
        permission_classes=OPERATOR,
        description=(
            "Check a cluster now, outside its schedule (inside the poller's concurrency limit, "
            "once across replicas). With wait, returns the state that check wrote, or a "
            "TIMEOUT userError after about twice the client timeout."
        ),
    )
    async def resync_cluster(
        self, info: Info[Context, None], id: strawberry.ID, wait: bool = True
    ) -> ClusterPayload:
        result = await lifecycle.resync_cluster(info.context, parse_cluster_id(id), wait=wait)
        return ClusterPayload.from_result(result)

    @strawberry.mutation(
        permission_classes=OPERATOR, description="Queue a check now for every matching cluster."
    )
    async def resync_clusters(
        self, info: Info[Context, None], filter: ClusterFilter | None = None
    ) -> ResyncClustersPayload:
        queued = await lifecycle.resync_clusters(info.context, cluster_filter_of(filter))
        return ResyncClustersPayload(queued=queued)

    @strawberry.mutation(
        permission_classes=ADMIN,
        description=(
            "Create an API token. The secret comes back in this response only; store it. "
            "A token never grants more than you hold."
        ),
    )
    async def create_api_token(
        self,
        info: Info[Context, None],
        name: str,
        role: Role,
        scope: str | None = None,
        expires_at: datetime | None = None,
    ) -> CreateApiTokenPayload:
        result = await tokens.create_api_token(
            info.context, name=name, role=role.value, scope=scope, expires_at=expires_at
        )
        return CreateApiTokenPayload.from_result(result)

    @strawberry.mutation(
        permission_classes=ADMIN,
        description="Revoke an API token now, open websockets included.",
    )
    async def revoke_api_token(
        self, info: Info[Context, None], id: strawberry.ID
    ) -> RevokeApiTokenPayload:
        result = await tokens.revoke_api_token(info.context, str(id))
        return RevokeApiTokenPayload.from_result(result)
