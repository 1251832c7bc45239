"""Putting a simulated fleet into fleetql's database, and the floor its node lists set.

Clusters are imported in this (the benchmark's) process through ``import_cluster``, the code
behind the ``importCluster`` mutation, without the HTTP and GraphQL layers: importing is not what
this benchmark measures, and in-process it takes seconds rather than minutes.

The floor is what parsing a cluster's node list cannot go below: the very bytes the poller
receives (fetched page by page as it does, ``PAGE_SIZE`` nodes at a time), given to
``orjson.loads`` alone, and to ``orjson.loads`` plus fleetql's own summation, in this process,
with nothing else around; and the same list in pages of 500 (the former page size), which orjson
parses for about twice the CPU per node of 100s.
"""

from __future__ import annotations

import base64
import gc
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from sqlalchemy import text

from bench._support import Database, gather_limited
from fleetql.access import SYSTEM
from fleetql.app import open_services
from fleetql.config import DatabaseSettings, EncryptionSettings, Settings
from fleetql.poller.nodes import summarize_nodes
from fleetql.poller.probe import PAGE_SIZE
from fleetql.resolvers.context import Context, Services
from fleetql.resolvers.imports import import_cluster

__all__ = ["fleet_services", "import_fleet", "measure_floor"]

_IMPORT_CONCURRENCY = 16
_FLOOR_BATCHES = 5
# The floor again with pages this large: orjson's cost per node doubles between 100 and 500.
LARGE_PAGE_SIZE = 500


@asynccontextmanager
async def fleet_services(database: Database) -> AsyncIterator[Services]:
    """The services a server would have on ``database`` (migrated, key verified), no server."""
    settings = Settings(
        database=DatabaseSettings(url=database.url),
        encryption=EncryptionSettings(key=database.key.to_base64()),
    )
    async with open_services(settings) as services:
        yield services


async def import_fleet(services: Services, kubeconfig_dir: Path) -> list[tuple[str, str]]:
    """Empty the database, then import every ``<name>.yaml`` in the folder under its name;
    returns the (name, kubeconfig) pairs imported, in name order."""
    async with services.sessions() as session:
        await session.execute(text("TRUNCATE clusters CASCADE"))
        await session.commit()
    context = Context(services=services, request_id="bench.poller", principal=SYSTEM)

    async def one(name: str, kubeconfig: str) -> None:
        result = await import_cluster(context, name=name, kubeconfig=kubeconfig)
        if result.cluster is None:
            raise RuntimeError(f"importing {name} failed: {result.user_errors}")

    kubeconfigs = _read_kubeconfigs(kubeconfig_dir)
    await gather_limited(_IMPORT_CONCURRENCY, [one(*entry) for entry in kubeconfigs])
    return kubeconfigs


def _read_kubeconfigs(folder: Path) -> list[tuple[str, str]]:
    """(name, YAML) of every ``<name>.yaml`` in the folder; small files, read before importing."""
    return [(path.stem, path.read_text()) for path in sorted(folder.glob("*.yaml"))]


async def fetch_node_pages(kubeconfig: str, page_size: int = PAGE_SIZE) -> list[bytes]:
    """The node list as the poller receives it: ``limit``/``continue`` pages of raw JSON."""
    document: dict[str, Any] = yaml.safe_load(kubeconfig)
    cluster = document["clusters"][0]["cluster"]
    token = document["users"][0]["user"]["token"]
    ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    verify = ssl.create_default_context(cadata=ca)
    pages: list[bytes] = []
    params = {"limit": str(page_size)}
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with httpx.AsyncClient(verify=verify, headers=headers, timeout=60) as client:
        while True:
            response = await client.get(f"{cluster['server']}/api/v1/nodes", params=params)
            response.raise_for_status()
            pages.append(response.content)
            token_next = orjson.loads(response.content)["metadata"].get("continue")
            if not token_next:
                return pages
            params = {"limit": str(page_size), "continue": token_next}


def _cpu_per_call(work: Callable[[], object], *, budget_s: float, collector: bool) -> float:
    """CPU seconds per call, over a few batches filling ``budget_s`` in all.

    With ``collector=False`` the cyclic GC is paused and the best batch counts: the floor is
    orjson's own work. With it on, the mean over all batches counts, because collections come
    every few calls and traverse this process's whole heap: that is the cost being measured.
    """
    started = time.process_time()
    work()
    once = max(time.process_time() - started, 1e-6)
    calls = max(1, int(budget_s / _FLOOR_BATCHES / once))
    batches: list[float] = []
    gc.collect()
    if not collector:
        gc.disable()
    try:
        for _ in range(_FLOOR_BATCHES):
            started = time.process_time()
            for _ in range(calls):
                work()
            batches.append((time.process_time() - started) / calls)
    finally:
        gc.enable()
    return min(batches) if not collector else sum(batches) / len(batches)


async def measure_floor(kubeconfig: str, *, budget_s: float) -> dict[str, Any]:
    """CPU per node of parsing one cluster's node list: orjson alone, orjson and fleetql's
    summation, and orjson alone with the garbage collector running as it does in a process
    holding fleetql (this one)."""
    pages = await fetch_node_pages(kubeconfig)
    nodes = max(1, sum(len(orjson.loads(page)["items"]) for page in pages))

    large_pages = await fetch_node_pages(kubeconfig, LARGE_PAGE_SIZE)

    def parse() -> None:
        for page in pages:
            orjson.loads(page)

    def parse_large_pages() -> None:
        for page in large_pages:
            orjson.loads(page)

    def parse_and_sum() -> None:
        items: list[dict[str, Any]] = []
        for page in pages:
            items.extend(orjson.loads(page)["items"])
        summarize_nodes(items)

    share = budget_s / 5

    def us_per_node(work: Callable[[], object], *, collector: bool) -> float:
        return round(1e6 * _cpu_per_call(work, budget_s=share, collector=collector) / nodes, 3)

    return {
        "nodes": nodes,
        "pages": len(pages),
        "bytes_per_node": round(sum(len(page) for page in pages) / nodes),
        "orjson_us_per_node": us_per_node(parse, collector=False),
        "orjson_and_sum_us_per_node": us_per_node(parse_and_sum, collector=False),
        "orjson_with_gc_us_per_node": us_per_node(parse, collector=True),
        "large_page_size": LARGE_PAGE_SIZE,
        "orjson_large_pages_us_per_node": us_per_node(parse_large_pages, collector=False),
        "gc_tracked_objects": len(gc.get_objects()),
        **_kubeconfig_parse_ms(kubeconfig, budget_s=share),
    }


def _kubeconfig_parse_ms(kubeconfig: str, *, budget_s: float) -> dict[str, float]:
    """What parsing a kubeconfig costs, as the poller does before every check (pure-Python
    ``yaml.safe_load``) and with libyaml's ``CSafeLoader``."""

    def pure() -> None:
        yaml.safe_load(kubeconfig)

    def libyaml() -> None:
        yaml.load(kubeconfig, Loader=yaml.CSafeLoader)

    def ms(work: Callable[[], object]) -> float:
        return round(1000 * _cpu_per_call(work, budget_s=budget_s / 2, collector=True), 3)

    return {"kubeconfig_safe_load_ms": ms(pure), "kubeconfig_csafe_load_ms": ms(libyaml)}
