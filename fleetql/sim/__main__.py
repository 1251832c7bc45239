"""``python -m fleetql.sim``: a fleet of simulated clusters in the foreground, for demos."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from fleetql.sim.cluster import SimCluster
from fleetql.sim.runner import run_simulator
from fleetql.sim.simulator import Simulator


def build_parser() -> argparse.ArgumentParser:
    """The command line; kept separate so the project CLI can mirror its options."""
    parser = argparse.ArgumentParser(
        prog="python -m fleetql.sim",
        description="Simulate a fleet of Kubernetes API servers over TLS on one port.",
    )
    parser.add_argument("--clusters", type=int, default=20, help="how many clusters (default 20)")
    parser.add_argument("--nodes", type=int, default=50, help="nodes per cluster (default 50)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=6443, help="HTTPS port, 0 for any (default 6443)"
    )
    parser.add_argument("--prefix", default="sim", help="cluster name prefix (default sim)")
    parser.add_argument(
        "--kubeconfig-dir",
        type=Path,
        default=None,
        help="write one kubeconfig per cluster here, named <cluster>.yaml",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run until interrupted."""
    args = build_parser().parse_args(argv)
    if args.clusters < 0 or args.nodes < 0:
        print("--clusters and --nodes must not be negative", file=sys.stderr)
        return 2

    def announce(sim: Simulator, fleet: list[SimCluster]) -> None:
        print(f"Simulating {len(fleet)} clusters of {args.nodes} nodes at {sim.base_url}/clusters/")
        if args.kubeconfig_dir is not None:
            first = fleet[0].name if fleet else "sim-001"
            print(f"Kubeconfigs are in {args.kubeconfig_dir}/ (e.g. {first}.yaml). Ctrl-C stops.")
        sys.stdout.flush()

    try:
        asyncio.run(
            run_simulator(
                clusters=args.clusters,
                nodes=args.nodes,
                host=args.host,
                port=args.port,
                prefix=args.prefix,
                kubeconfig_dir=args.kubeconfig_dir,
                on_ready=announce,
            )
        )
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
