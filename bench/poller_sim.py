"""The poller benchmark's simulator process, and how the benchmark starts and stops it.

``python -m bench.poller_sim --clusters N --nodes M --kubeconfig-dir DIR`` is ``python -m
fleetql.sim --port 0`` plus two things a measurement needs: every cluster's node list and metrics
are rendered before it announces itself (the simulator renders lazily, which would otherwise land
in the first sweep's wall time), and the announcement is one JSON line (port, render time).
It runs in a process of its own so that its CPU is never the poller's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from fleetql.sim.cluster import SimCluster
from fleetql.sim.runner import run_simulator
from fleetql.sim.simulator import Simulator

__all__ = ["PREFIX", "SimulatorProcess", "simulator_process"]

PREFIX = "bench"


@dataclass(frozen=True)
class SimulatorProcess:
    """A running simulator: its pid (the driver reads its CPU), port, kubeconfigs and memory."""

    pid: int
    port: int
    kubeconfig_dir: Path
    render_s: float

    def rss_mib(self) -> float:
        rss = int(psutil.Process(self.pid).memory_info().rss)
        return round(rss / 2**20, 1)


@contextmanager
def simulator_process(
    clusters: int, nodes: int, kubeconfig_dir: Path
) -> Iterator[SimulatorProcess]:
    """Start the simulator, wait for its announcement, and stop it (SIGINT, then kill) after."""
    command = [
        sys.executable,
        "-m",
        "bench.poller_sim",
        f"--clusters={clusters}",
        f"--nodes={nodes}",
        f"--kubeconfig-dir={kubeconfig_dir}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        yield _announced(process)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _announced(process: subprocess.Popen[str]) -> SimulatorProcess:
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until announced, or the child died
    if not line:
        raise RuntimeError(f"the simulator exited before announcing itself ({process.poll()})")
    ready = json.loads(line)
    return SimulatorProcess(
        pid=process.pid,
        port=int(ready["port"]),
        kubeconfig_dir=Path(ready["kubeconfig_dir"]),
        render_s=float(ready["render_s"]),
    )


def _render_and_announce(sim: Simulator, fleet: list[SimCluster], directory: Path) -> None:
    started = time.process_time()
    for cluster in fleet:
        cluster.node_listing()
        cluster.metrics_body()
    ready = {
        "port": sim.port,
        "kubeconfig_dir": str(directory),
        "render_s": round(time.process_time() - started, 3),
    }
    print(json.dumps(ready), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.poller_sim")
    parser.add_argument("--clusters", type=int, required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--kubeconfig-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    with suppress(KeyboardInterrupt):
        asyncio.run(
            run_simulator(
                clusters=args.clusters,
                nodes=args.nodes,
                port=0,
                prefix=PREFIX,
                kubeconfig_dir=args.kubeconfig_dir,
                on_ready=lambda sim, fleet: _render_and_announce(sim, fleet, args.kubeconfig_dir),
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
