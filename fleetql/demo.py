"""``fleetql serve --demo N``: a live fleet for a newcomer who owns no cluster.

The simulator runs inside the server process; its clusters are imported through the same code as
``importCluster``, and a small task keeps changing them (a node goes NotReady and comes back, a
cluster is upgraded), so the list and the subscription have something to show.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import yaml

from fleetql.access import SYSTEM
from fleetql.resolvers.context import Context, Services
from fleetql.resolvers.imports import import_cluster, refresh_kubeconfig
from fleetql.sim import Simulator
from fleetql.sim.cluster import SimCluster

__all__ = ["demo_fleet"]

logger = logging.getLogger(__name__)

_ENVIRONMENTS = ("prod", "staging", "dev")
_REGIONS = ("eu-west", "us-east", "ap-south")


@asynccontextmanager
async def demo_fleet(
    services: Services, *, count: int, nodes: int = 20, change_every: float = 10.0
) -> AsyncIterator[Simulator]:
    """Simulate ``count`` clusters, import (or re-key) them as ``demo-001``…, keep them moving."""
    async with Simulator() as sim:
        fleet = sim.fleet(count, nodes=nodes, prefix="demo")
        context = Context(services=services, request_id="demo", principal=SYSTEM)
        for index, cluster in enumerate(fleet):
            await _import(context, sim, cluster, index)
        logger.info(
            "demo: %d simulated clusters of %d nodes imported (demo-001…); they change every %.0fs",
            count,
            nodes,
            change_every,
        )
        task = asyncio.create_task(_keep_changing(fleet, change_every), name="demo.changes")
        try:
            yield sim
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _import(context: Context, sim: Simulator, cluster: SimCluster, index: int) -> None:
    kubeconfig = yaml.safe_dump(sim.kubeconfig(cluster.name))
    labels = [
        ("env", _ENVIRONMENTS[index % len(_ENVIRONMENTS)]),
        ("region", _REGIONS[index // len(_ENVIRONMENTS) % len(_REGIONS)]),
        ("fleetql.io/demo", "true"),
    ]
    result = await import_cluster(
        context,
        name=cluster.name,
        kubeconfig=kubeconfig,
        description="A simulated cluster (fleetql serve --demo)",
        labels=labels,
    )
    problems = result.user_errors
    if [error.code for error in problems] == ["NAME_TAKEN"]:
        # Imported by an earlier demo run, whose simulator had other certificates and tokens.
        problem = await refresh_kubeconfig(context, name=cluster.name, kubeconfig=kubeconfig)
        problems = [] if problem is None else [problem]
    for error in problems:
        logger.warning("demo: cannot import %s: %s %s", cluster.name, error.code, error.message)


async def _keep_changing(fleet: list[SimCluster], every: float) -> None:
    chance = random.Random()
    while fleet:
        await asyncio.sleep(every)
        cluster = chance.choice(fleet)
        spec = cluster.spec
        if spec.ready_nodes is not None:
            spec.ready_nodes = None  # the node recovers
        elif chance.random() < 0.8:
            spec.ready_nodes = max(0, spec.node_count - chance.randint(1, 3))
        else:
            minor = int(spec.version.split(".")[1])
            spec.version = f"v1.{minor + 1}.0"
