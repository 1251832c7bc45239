"""The list benchmark's section of RESULTS.md, written from its results alone (so that results
kept from an earlier run render the same way)."""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench.query_report import layer_table, work_node

__all__ = ["markdown"]

FINDINGS = """### Findings and suggested fixes

The targets are far off at 100,000 clusters, and PostgreSQL, not Python, is most of the gap. The
alternatives' timings below come from a one-off EXPLAIN ANALYZE at 100,000 clusters while this
benchmark was written (the same fleet), not from every run.

1. **Applied: `total` is counted only when selected, joining `cluster_states` only for a
   status filter** (`fleetql/db/clusters.py`, `list_clusters`). The page itself takes under 1 ms;
   the unfiltered count was a hash join of 100,000 x 100,000 rows (84 ms; an index-only count of
   `clusters` takes ~12 ms). Compare "first page" with "first page, no total" above. Still open:
   for unfiltered lists serve an estimate, or a count cached for a second or two.
2. **Applied: deep pages choose their ids on `clusters` alone, then join** (ordering by name or
   creation time without a status filter): page 200 fetched 4,000 joined rows before (at 10,000
   clusters the planner sorted all of them, spilling to disk). Still open: keyset pagination (an
   `after` cursor) would make every page cost the same.
3. **Search walks the name index** (`filter_conditions`, `search`): the planner overestimates
   how many rows `ILIKE '%…%'` matches and walks `clusters_name_live_key` in name order,
   filtering ~27,000 rows to find 20; the trigram indexes are not used for the page. Match first
   through them (`WITH m AS MATERIALIZED (SELECT id FROM clusters WHERE … ILIKE …)`), then order
   and limit: 90 ms → 41 ms.
4. **The encrypted kubeconfig lives inline in the table every list scans**
   (`clusters.kubeconfig_ciphertext`, ~1.1 KB a row, under the 2 KB TOAST threshold): 100,000
   clusters make a 157 MB heap, more than PostgreSQL's default 128 MB shared_buffers, so scans
   that visit rows (search, deep pages) read several times the pages the listed columns need.
   Move credentials to a 1:1 table only the poller reads (a migration).
5. **A fixed ~1 ms and three round trips per request before any SQL** (`cluster(id)`: SQL 0.04
   ms, resolver about 1 ms): `pool_pre_ping=True` (`fleetql/db/engine.py`) pings on every
   checkout, and every read runs inside BEGIN … ROLLBACK through the ORM session. Drop the
   pre-ping (use `pool_recycle`; asyncpg reports a dead connection on use) and run read-only
   resolvers on an AUTOCOMMIT connection with Core statements.
6. **GraphQL itself costs ~1.6-2 ms of CPU for a 20-cluster page** (the GraphQL floor) and the
   server spends 5-9 ms of CPU per list request, so one process tops out near 110-200 list
   requests/s here. 500 req/s at 32 clients on 2 cores shared with PostgreSQL is out of reach for
   list pages even with the SQL fixed; it needs caching of identical (document, variables)
   responses for a second (consoles poll the same pages) or more cores.
7. **Workers**: one process on 2 cores. A second process added nothing for list pages
   (PostgreSQL-bound) and lost throughput on `cluster(id)` (two Python processes and PostgreSQL
   fighting for 2 cores). With PostgreSQL on its own machine, run one process per core
   (replicas with `events.url: postgres://`).
"""


def markdown(result: dict[str, Any]) -> str:
    """The section of RESULTS.md: setup, one table per size, targets, and where the time goes."""
    largest, timing = result["sizes"][-1], result["timing"]
    # Results from before titles were recorded render with the queries' names.
    titles = result.get("titles") or {name: name for name in largest["queries"]}
    return "\n".join(
        [
            "## List queries\n",
            f"`fleetql serve` ({result['workers']} uvicorn process, pool 10 + 10), the embedded "
            "PostgreSQL, and a load generator (aiohttp on uvloop, keep-alive, closed loop) in "
            f"a third process; each figure is {timing['duration']} s of load after "
            f"{timing['warmup']} s of warm-up. Floors, measured in the same run: **SQL** = the "
            "statements fleetql runs for the query (captured from `fleetql.db.clusters`), "
            "replayed through one asyncpg connection; **GraphQL** = Strawberry executing the "
            "same document over the same records held in memory (the API's types and "
            "`from_row`, parser and validation caches, fleetql's executor, no I/O). Ratio = "
            "server p50 at 1 client / (SQL + GraphQL floor p50). Resolver = fleetql's own "
            "resolver call (SQLAlchemy session, pool, every statement) in process, to set "
            "beside the SQL floor. CPU = milliseconds of CPU per request at 1 client, server / "
            "PostgreSQL.\n",
            *(_size_table(size, titles) for size in result["sizes"]),
            _targets_table(result, titles),
            _workers_table(result, titles),
            _machine_load(result),
            _explain_table(largest, titles),
            layer_table(result, largest, titles),
            _reading(largest, titles),
            FINDINGS,
        ]
    )


def _size_table(size: dict[str, Any], titles: dict[str, str]) -> str:
    rows = [
        f"### {size['clusters']:,} clusters\n",
        "| query | 1 client p50 / p99 ms | req/s | 32 clients p50 / p99 ms | req/s "
        "| SQL floor ms | resolver ms | GraphQL floor ms | ratio | CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, query in size["queries"].items():
        one, many = query["server"]["1"], query["server"]["32"]
        rows.append(
            f"| {titles[name]} | {one['p50_ms']:.1f} / {one['p99_ms']:.1f} | {one['rps']:.0f} "
            f"| {many['p50_ms']:.1f} / {many['p99_ms']:.1f} | {many['rps']:.0f} "
            f"| {query['sql_floor']['p50_ms']:.2f} | {query['resolver']['p50_ms']:.2f} "
            f"| {query['graphql_floor']['p50_ms']:.2f} "
            f"| {query['ratio']:.1f} | {one['server_cpu_ms']:.1f} / {one['postgres_cpu_ms']:.1f} |"
        )
    return "\n".join(rows) + "\n"


def _mark(met: bool, figure: float, unit: str = "") -> str:
    return f"{'met' if met else '**not met**'} ({figure:.1f}{unit})"


def _targets_table(result: dict[str, Any], titles: dict[str, str]) -> str:
    targets = result["targets"]
    clusters, target = result["sizes"][-1]["clusters"], result.get("target_clusters", 100_000)
    quick = "" if clusters >= target else f" (quick run: judged here, not at {target:,})"
    rows = [
        f"### Targets at {clusters:,} clusters{quick}\n",
        f"| query | 1 client p50 ≤ {targets['p50_ms']:g} ms | p99 ≤ {targets['p99_ms']:g} ms "
        f"| 32 clients ≥ {targets['rps_32']:g} req/s | p99 ≤ {targets['p99_32_ms']:g} ms "
        f"| ≤ {targets['ratio']:g}x floors |",
        "|---|---|---|---|---|---|",
    ]
    size = result["sizes"][-1]["queries"]
    for name, verdict in result["verdicts"].items():
        one, many = size[name]["server"]["1"], size[name]["server"]["32"]
        cells = [
            _mark(verdict["p50_1"], one["p50_ms"]),
            _mark(verdict["p99_1"], one["p99_ms"]),
            _mark(verdict["rps_32"], many["rps"]),
            _mark(verdict["p99_32"], many["p99_ms"]),
            _mark(verdict["floors"], size[name]["ratio"], "x"),
        ]
        rows.append(f"| {titles[name]} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _workers_table(result: dict[str, Any], titles: dict[str, str]) -> str:
    rows = [
        "### Workers\n",
        f"Recommended for 2 cores: **{result['workers']} process** (`fleetql serve` is one "
        "uvicorn process; every figure above uses one). A second `fleetql serve` on the same "
        "database, with the 32 clients split between the two, measured back to back with one:\n",
        "| query | 1 process req/s, p99 ms | 2 processes req/s, p99 ms "
        "| CPU ms/req servers / PostgreSQL, 1 → 2 |",
        "|---|---|---|---|",
    ]
    for name, pair in result["two_workers"].items():
        one, two = pair["1"], pair["2"]
        rows.append(
            f"| {titles[name]} | {one['rps']:.0f}, {one['p99_ms']:.0f} "
            f"| {two['rps']:.0f}, {two['p99_ms']:.0f} "
            f"| {one['server_cpu_ms']:.1f} / {one['postgres_cpu_ms']:.1f} → "
            f"{two['server_cpu_ms']:.1f} / {two['postgres_cpu_ms']:.1f} |"
        )
    return "\n".join(rows) + "\n"


def _machine_load(result: dict[str, Any]) -> str:
    others = [
        figures["other_cores"]
        for size in result["sizes"]
        for query in size["queries"].values()
        for figures in query["server"].values()
    ]
    return (
        f"Other work on this shared machine during the measurements: {statistics.fmean(others):.2f}"
        f" cores on average, {max(others):.2f} at most (of {os.cpu_count()}); figures taken while "
        "it was high are low.\n"
    )


def _explain_table(size: dict[str, Any], titles: dict[str, str]) -> str:
    rows = [
        f"### Where the time goes at {size['clusters']:,} clusters\n",
        "PostgreSQL (EXPLAIN ANALYZE execution time of each statement, ms; plans in "
        "results.json):\n",
        "| query | count(*) | page / row | top plan node of the slower one |",
        "|---|---|---|---|",
    ]
    for name, query in size["queries"].items():
        by_kind = {entry["kind"]: entry for entry in query["explain"]}
        slowest = max(query["explain"], key=lambda entry: entry.get("execution", 0.0))
        count = by_kind.get("count", {}).get("execution")
        rows.append(
            f"| {titles[name]} | {'-' if count is None else f'{count:.2f}'} "
            f"| {by_kind['rows'].get('execution', 0.0):.2f} | {work_node(slowest['plan'])} |"
        )
    return "\n".join(rows) + "\n"


def _reading(size: dict[str, Any], titles: dict[str, str]) -> str:
    lines = [
        "The server's p50 at 1 client, taken apart with figures measured without a profiler: "
        "SQL floor; + SQLAlchemy, session and pool (fleetql's resolver call in process, minus "
        "the SQL floor: pre-ping, BEGIN and ROLLBACK round trips, statement building, rows to "
        "records); + GraphQL floor; + the rest (HTTP, uvicorn, Strawberry's view, the API's "
        "extensions, JSON, loopback). One process cannot serve more than 1000 / server CPU ms "
        "requests per second.\n"
    ]
    for name, query in size["queries"].items():
        one = query["server"]["1"]
        sql, graphql = query["sql_floor"]["p50_ms"], query["graphql_floor"]["p50_ms"]
        session = max(0.0, query["resolver"]["p50_ms"] - sql)
        rest = max(0.0, one["p50_ms"] - sql - session - graphql)
        cap = 1000 / one["server_cpu_ms"] if one["server_cpu_ms"] else 0.0
        lines.append(
            f"- {titles[name]}: {one['p50_ms']:.1f} ms = SQL {sql:.1f} + SQLAlchemy {session:.1f} "
            f"+ GraphQL {graphql:.1f} + rest {rest:.1f}; {one['server_cpu_ms']:.1f} ms of server "
            f"CPU per request caps one process near {cap:.0f} req/s."
        )
    return "\n".join(lines) + "\n"
