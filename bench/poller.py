"""The poller benchmark: full sweeps of a simulated fleet, CPU per check and per node, peak RSS.

For each fleet shape (many small clusters; few large ones) the simulator runs in a process of its
own (``bench.poller_sim``), its clusters are imported into a fresh database, and a poller process
(``bench.poller_driver``) sweeps the whole fleet at each concurrency: a cold sweep (clients built,
TLS handshakes), a warm one (pooled clients and connections) and, at one concurrency, an idle one
(pooled clients, connections expired, as between checks 5 minutes apart). Two more poller
processes repeat the cold and warm sweeps: one with the garbage collector's threshold at
Python's default (the what-if of a poller that does not tune it), one under cProfile to say where
the CPU goes. The floor, measured in the same run, is orjson parsing the same node-list bytes
(``bench.poller_fleet``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench._support import Database, bench_database
from bench.poller_driver import DATABASE_URL_VARIABLE, KEY_VARIABLE, DriverOptions, command
from bench.poller_fleet import fleet_services, import_fleet, measure_floor
from bench.poller_report import render, summarize_targets
from bench.poller_sim import simulator_process
from fleetql.resolvers.context import Services

__all__ = ["markdown", "run"]

CONCURRENCIES = (10, 50, 200)
# The concurrency of the idle sweep and of the profiled run.
REFERENCE_CONCURRENCY = 50
_DRIVER_TIMEOUT = 900.0


@dataclass(frozen=True)
class FleetShape:
    clusters: int
    nodes: int
    # Sweep once more after connections expire: worth its 17 s wait where handshakes weigh, and
    # the full run has the time (the quick run reads the cold sweep as the steady state's bound).
    idle_sweep: bool
    # The profiled sweeps check this many clusters: cProfile doubles the CPU, and a few hundred
    # checks say where it goes as well as thousands.
    profile_sample: int

    @property
    def label(self) -> str:
        return f"{self.clusters:,} clusters x {self.nodes:,} nodes"


FULL = (
    FleetShape(2000, 50, idle_sweep=True, profile_sample=400),
    FleetShape(200, 1000, idle_sweep=False, profile_sample=40),
)
QUICK = (
    FleetShape(300, 50, idle_sweep=False, profile_sample=60),
    FleetShape(20, 1000, idle_sweep=False, profile_sample=6),
)
# The what-if: the collector's first threshold back at Python's default, 700, after fleetql's
# own tuning (see bench.poller_driver and fleetql.poller.heap): what that tuning is worth.
WHAT_IF_GC_THRESHOLD = 700


async def run(quick: bool) -> dict[str, Any]:
    """Measure each fleet shape in turn (never two simulators at once: they take gigabytes)."""
    shapes = QUICK if quick else FULL
    fleets: list[dict[str, Any]] = []
    async with (
        bench_database("fleetql_bench_poller") as database,
        fleet_services(database) as services,
    ):
        for shape in shapes:
            print(f"   poller: {shape.label}", flush=True)
            fleets.append(await measure_shape(shape, database, services, quick=quick))
    return {
        "concurrencies": list(CONCURRENCIES),
        "reference_concurrency": REFERENCE_CONCURRENCY,
        "fleets": fleets,
        "targets": summarize_targets(fleets, REFERENCE_CONCURRENCY),
    }


def markdown(result: dict[str, Any]) -> str:
    """The RESULTS.md section: figures, floor, targets, and where the time goes."""
    return render(result)


async def measure_shape(
    shape: FleetShape, database: Database, services: Services, *, quick: bool
) -> dict[str, Any]:
    """Simulate, import, take the floor, then sweep at every concurrency, once with the GC
    what-if and once profiled."""
    with (
        tempfile.TemporaryDirectory(prefix="fleetql-bench-poller-") as scratch,
        simulator_process(shape.clusters, shape.nodes, Path(scratch) / "kubeconfigs") as sim,
    ):
        started = time.monotonic()
        kubeconfigs = await import_fleet(services, sim.kubeconfig_dir)
        import_s = time.monotonic() - started
        _, first_kubeconfig = kubeconfigs[0]
        floor = await measure_floor(first_kubeconfig, budget_s=0.6 if quick else 2.0)
        options = functools.partial(
            DriverOptions, clusters=len(kubeconfigs), sim_pid=sim.pid, kinds=("cold", "warm")
        )
        runs = [
            await run_driver(database, options(concurrency=c, kinds=_kinds(shape, c)))
            for c in CONCURRENCIES
        ]
        what_if = await run_driver(
            database,
            options(concurrency=REFERENCE_CONCURRENCY, gc_threshold=WHAT_IF_GC_THRESHOLD),
        )
        profiled = await run_driver(
            database,
            options(concurrency=REFERENCE_CONCURRENCY, profile=True, sample=shape.profile_sample),
        )
        sim_rss_mib = sim.rss_mib()
    for entry in [*runs, what_if, profiled]:
        entry["sweeps"] = [derive(sweep, shape, floor) for sweep in entry["sweeps"]]
    return {
        "clusters": shape.clusters,
        "nodes": shape.nodes,
        "label": shape.label,
        "setup": {
            "sim_render_s": sim.render_s,
            "sim_rss_mib": sim_rss_mib,
            "import_s": round(import_s, 1),
        },
        "floor": floor,
        "runs": runs,
        "gc_what_if": what_if,
        "profile": profiled,
    }


def _kinds(shape: FleetShape, concurrency: int) -> tuple[str, ...]:
    idle = shape.idle_sweep and concurrency == REFERENCE_CONCURRENCY
    return ("cold", "warm", "idle") if idle else ("cold", "warm")


def derive(sweep: dict[str, Any], shape: FleetShape, floor: dict[str, Any]) -> dict[str, Any]:
    """Add the per-check and per-node figures and the ratio to the orjson floor."""
    checks = max(sweep["checked"], 1)
    cpu = sweep["cpu_user_s"] + sweep["cpu_system_s"]
    per_node_us = 1e6 * cpu / (checks * max(shape.nodes, 1))
    return sweep | {
        "cpu_s": round(cpu, 3),
        "checks_per_s": round(checks / max(sweep["wall_s"], 1e-9), 1),
        "cpu_ms_per_check": round(1000 * cpu / checks, 3),
        "cpu_us_per_node": round(per_node_us, 3),
        "ratio_to_orjson": round(per_node_us / floor["orjson_us_per_node"], 2),
        "gc_ms_per_check": round(1000 * sweep["gc_s"] / checks, 3),
        "gc_share": round(sweep["gc_s"] / max(cpu, 1e-9), 3),
        "sim_cpu_ms_per_check": round(1000 * sweep["sim_cpu_s"] / checks, 3),
    }


async def run_driver(database: Database, options: DriverOptions) -> dict[str, Any]:
    """One ``bench.poller_driver`` process; its JSON line, checked for a complete sweep."""
    environment = os.environ | {
        DATABASE_URL_VARIABLE: database.url,
        KEY_VARIABLE: database.key.to_base64(),
    }
    process = await asyncio.create_subprocess_exec(
        *command(options), env=environment, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), _DRIVER_TIMEOUT)
    if process.returncode != 0:
        raise RuntimeError(f"the poller driver failed ({process.returncode}): {options}")
    result: dict[str, Any] = orjson.loads(stdout.splitlines()[-1])
    for sweep in result["sweeps"]:
        if sweep["checked"] != result["due"] or sweep["healthy"] != result["due"]:
            raise RuntimeError(f"incomplete sweep ({options}): {sweep}")
    return result
