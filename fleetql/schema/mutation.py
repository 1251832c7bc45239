"""The Mutation root: changing the fleet."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from fleetql.resolvers import imports
from fleetql.resolvers.context import Context
from fleetql.schema.inputs import ImportClusterInput
from fleetql.schema.types import Cluster, ImportClusterPayload, UserError


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Import a cluster by kubeconfig. Expected failures come back in userErrors."
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
