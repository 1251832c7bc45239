"""Run the simulator in the foreground and leave one kubeconfig file per cluster for demos.

``fleetql sim`` (the project CLI) and ``python -m fleetql.sim`` both call ``run_simulator``; the
files let a user run ``fleetql import DIR/sim-001.yaml --name sim-001`` against a live "fleet".
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fleetql.sim.cluster import SimCluster
from fleetql.sim.simulator import Simulator

__all__ = ["run_simulator", "write_kubeconfigs"]


def write_kubeconfigs(sim: Simulator, clusters: list[SimCluster], directory: Path) -> list[Path]:
    """Write ``<name>.yaml`` for each cluster into ``directory`` (created if missing), mode 0600.

    The files hold bearer tokens, so only their owner may read them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for cluster in clusters:
        path = directory / f"{cluster.name}.yaml"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            yaml.safe_dump(sim.kubeconfig(cluster.name), file, sort_keys=False)
        written.append(path)
    return written


async def run_simulator(
    *,
    clusters: int = 20,
    nodes: int = 50,
    host: str = "127.0.0.1",
    port: int = 0,
    prefix: str = "sim",
    kubeconfig_dir: Path | None = None,
    on_ready: Callable[[Simulator, list[SimCluster]], Any] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``clusters`` clusters of ``nodes`` nodes until ``stop`` is set or we are cancelled.

    ``on_ready`` is called once everything listens and the kubeconfigs are written (the CLI prints
    where they are); without ``stop`` the simulator runs until SIGINT/SIGTERM or cancellation.
    """
    async with Simulator(host=host, port=port) as sim:
        fleet = sim.fleet(clusters, nodes=nodes, prefix=prefix)
        if kubeconfig_dir is not None:
            write_kubeconfigs(sim, fleet, kubeconfig_dir)
        if on_ready is not None:
            on_ready(sim, fleet)
        if stop is None:
            await sim.wait_closed()
            return
        stopped = asyncio.create_task(stop.wait(), name="sim.stop")
        closed = asyncio.create_task(sim.wait_closed(), name="sim.closed")
        try:
            await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopped, closed):
                task.cancel()
            await asyncio.gather(stopped, closed, return_exceptions=True)
