"""The history benchmark's section of RESULTS.md, written from its results alone (so that
results kept from an earlier run render the same way)."""

from __future__ import annotations

from typing import Any

from bench.query_report import layer_table, work_node

__all__ = ["markdown"]

TARGETS = {"p50_ms": 5.0, "p99_ms": 20.0, "rps_32": 500.0, "p99_32_ms": 100.0}

FINDINGS = """### Findings and what was done

First measured at 0201a1e and again at 2aa6fef (unfiltered `fleetSummary` 250 ms at 100,000
clusters, 4-5 req/s at 32 clients; events pages ~9 ms; `cluster { events availability }` ~9 ms;
replay ~4,400 events/s). Since then, each measured in process before it landed:

1. **`fleetSummary` from the fleet totals** (`fleetql/db/totals.py`, migration 0006): sums per
   (status, minor version), spread over 8 shard rows, kept by PostgreSQL triggers inside each
   writing transaction, so the answer stays exact (read-your-writes) and costs ~0.1 ms of SQL
   instead of a ~240 ms scan; a check that changes nothing runs no trigger function. A filter or
   a label-scoped principal still aggregates its clusters: the label selector at 100,000
   clusters spends ~30 ms in PostgreSQL (a MixedAggregate over ~5,800 matching clusters and
   their states, found by a bitmap heap scan over most of the table), which misses the
   targets: a dashboard over a label scope at that size is the case left.
2. **Event pages and `cluster { events availability }`** lost the per-request fixed costs of
   the list queries (no pre-ping, no BEGIN/ROLLBACK, one connection per request, statements
   built once) and most of graphql-core's per-field work (plain fields read straight from
   their objects: a page of 50 events is ~930 fields): ~9 ms -> ~2.6 ms at 1 client, ~500
   pages/s at 32 clients.
3. **Replay** runs at ~6,100 events/s (was ~2,200, then ~4,400), ~33x its floor: each replayed
   event is still executed for its subscriber alone (the cohort cache does not help a replay:
   every replay builds fresh deliveries), ~160 µs of CPU per event. Consoles reconnecting after
   a deploy all replay the same range; serving replays from a bounded cache of recent
   deliveries would let them share one execution per event. `clusterStatesChanged` with
   `after` sends a replay as lists of up to 1,000 events, one message each.
4. **32 clients**: measured with two `fleetql serve` processes, as the list benchmark
   recommends for 2 cores. Unfiltered `fleetSummary`, the event pages and
   `cluster { events availability }` then meet both 32-client targets at 100,000 clusters;
   one cluster's status changes reach 735 req/s with a p99 of ~160 ms (its p50 is 36 ms: a
   tail, on a machine whose other work took ~0.5 cores meanwhile), and the filtered summary is
   PostgreSQL-bound (finding 1).
"""


def _servers(workers: int) -> str:
    if workers == 1:
        return "`fleetql serve` (1 process, pool 10 + 10) starts"
    return (
        f"{workers} `fleetql serve` processes (replicas, pool 10 + 10 each; the load "
        "generator's clients are spread across them, a single client uses the first) start"
    )


def markdown(result: dict[str, Any]) -> str:
    """Setup, one table per size (queries, then replays), targets, where the time goes."""
    timing, largest = result["timing"], result["sizes"][-1]
    titles = result["titles"]
    commit = result.get("_meta", {}).get("commit", "?")
    # "+dirty": uncommitted changes in the checkout then (the benchmark's own report files,
    # when a run is re-rendered before it is committed).
    stamp = f"Measured at {commit}. "
    return "\n".join(
        [
            "## History queries: fleetSummary, events, replay\n",
            stamp
            + f"The list benchmark's fleet, plus an event log of {result['events_per_cluster']} "
            f"events per cluster over {result['event_days']} days (status changes between "
            "HEALTHY and a bad status, node changes, failed checks and recoveries, label edits, "
            "upgrades), written by one `INSERT … SELECT generate_series … ORDER BY at` so ids "
            "follow commit time; the relay's position is set to the newest id and "
            f"{_servers(result.get('workers', 1))} after seeding. HTTP queries: the "
            "list benchmark's load generator in another process, "
            f"{timing['duration']} s of load after {timing['warmup']} s of warm-up. **SQL "
            "floor** = the statements fleetql runs for the query (captured in process), replayed "
            "through one asyncpg connection; ratio = server p50 at 1 client / SQL floor p50; "
            "resolver = fleetql's resolver calls in process (session, pool, every statement). "
            "**Replay**: a websocket client (graphql-transport-ws, no compression, in the "
            "benchmark's process) subscribes to `clusterEvents(after: X)` and times the "
            "subscribe message to the last replayed event (median of "
            f"{timing['replays']}); **floor** = `publishable_events`' statement through asyncpg "
            "plus building and orjson-encoding the same `next` messages from its rows.\n",
            *(_size_tables(size, titles) for size in result["sizes"]),
            _targets_table(largest, titles),
            _explain_table(largest, titles),
            layer_table(result, largest, titles),
            _replay_profile(result),
            _reading(largest, titles),
            FINDINGS,
        ]
    )


def _size_tables(size: dict[str, Any], titles: dict[str, str]) -> str:
    rows = [
        f"### {size['clusters']:,} clusters, {size['events']:,} events\n",
        "| query | 1 client p50 / p99 ms | req/s | 32 clients p50 / p99 ms | req/s "
        "| SQL floor ms | resolver ms | ratio | CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, query in size["queries"].items():
        one, many = query["server"]["1"], query["server"]["32"]
        rows.append(
            f"| {titles[name]} | {one['p50_ms']:.1f} / {one['p99_ms']:.1f} | {one['rps']:.0f} "
            f"| {many['p50_ms']:.1f} / {many['p99_ms']:.1f} | {many['rps']:.0f} "
            f"| {query['sql_floor']['p50_ms']:.2f} | {query['resolver']['p50_ms']:.2f} "
            f"| {query['ratio']:.1f} | {one['server_cpu_ms']:.1f} / {one['postgres_cpu_ms']:.1f} |"
        )
    rows += [
        "",
        "| replay `clusterEvents(after: X)` | events | total ms | first event ms | events/s "
        "| resolver ms | floor ms (SQL) | ratio | client CPU ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for depth, replay in size["replays"].items():
        rows.append(
            f"| {int(depth):,} events back | {replay['events']:,} | {replay['total_ms']:.0f} "
            f"| {replay['first_event_ms']:.0f} | {replay['events_per_second']:,} "
            f"| {replay['resolver_ms']:.1f} | {replay['floor_ms']:.1f} "
            f"({replay['floor_sql_ms']:.1f}) | {replay['ratio']:.1f} "
            f"| {replay['client_cpu_ms']:.0f} |"
        )
    return "\n".join(rows) + "\n"


def _mark(met: bool, figure: float) -> str:
    return f"{'met' if met else '**not met**'} ({figure:.1f})"


def _targets_table(size: dict[str, Any], titles: dict[str, str]) -> str:
    quick = "" if size["clusters"] >= 100_000 else " (quick run: judged here, not at 100,000)"
    rows = [
        f"### Issue 5's list-query targets at {size['clusters']:,} clusters{quick}\n",
        f"| query | 1 client p50 ≤ {TARGETS['p50_ms']:g} ms | p99 ≤ {TARGETS['p99_ms']:g} ms "
        f"| 32 clients ≥ {TARGETS['rps_32']:g} req/s | p99 ≤ {TARGETS['p99_32_ms']:g} ms |",
        "|---|---|---|---|---|",
    ]
    for name, query in size["queries"].items():
        one, many = query["server"]["1"], query["server"]["32"]
        cells = [
            _mark(one["p50_ms"] <= TARGETS["p50_ms"], one["p50_ms"]),
            _mark(one["p99_ms"] <= TARGETS["p99_ms"], one["p99_ms"]),
            _mark(many["rps"] >= TARGETS["rps_32"], many["rps"]),
            _mark(many["p99_ms"] <= TARGETS["p99_32_ms"], many["p99_ms"]),
        ]
        rows.append(f"| {titles[name]} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _explain_table(size: dict[str, Any], titles: dict[str, str]) -> str:
    rows = [
        f"### Where the time goes at {size['clusters']:,} clusters\n",
        "PostgreSQL: EXPLAIN ANALYZE execution time of each statement the query runs, in "
        "order (ms), and the node doing the work in the slowest (plans in results.json):\n",
        "| query | statements, ms | slowest plan's work node |",
        "|---|---|---|",
    ]
    entries = [(titles[name], query["explain"]) for name, query in size["queries"].items()]
    entries += [
        (f"replay {int(depth):,} back", replay["explain"])
        for depth, replay in size["replays"].items()
    ]
    for title, explained in entries:
        times = " + ".join(f"{entry.get('execution', 0.0):.2f}" for entry in explained)
        slowest = max(explained, key=lambda entry: entry.get("execution", 0.0))
        rows.append(f"| {title} | {times} | {work_node(slowest['plan'])} |")
    return "\n".join(rows) + "\n"


def _replay_profile(result: dict[str, Any]) -> str:
    replay = result["profile"]["replay"]
    rows = _resolver_profile(result["profile"].get("replay_resolver"))
    rows += [
        f"A replay of {replay['events']:,} events from a fleetql server thread in the "
        "benchmark's process under cProfile (thread CPU; the profiler roughly doubles Python "
        "time, read the shares): "
        f"{replay['profiled_seconds']:.2f} s profiled.\n",
        "| category | share | µs per event (profiled) |",
        "|---|---|---|",
    ]
    for category in replay["categories"]:
        if category["share"] >= 0.01:
            rows.append(
                f"| {category['category']} | {category['share']:.0%} "
                f"| {category['us_per_delivery']:.0f} |"
            )
    rows += ["", "| costliest functions (own time) | calls | share |", "|---|---|---|"]
    for function in replay["top_functions"][:8]:
        rows.append(
            f"| `{function['function']}` | {function['calls']:,} | {function['share']:.0%} |"
        )
    return "\n".join(rows) + "\n"


def _resolver_profile(profile: dict[str, Any] | None) -> list[str]:
    """The replay's first step (log read, clusters, deliveries) under cProfile, in process."""
    if profile is None:
        return []
    rows = [
        f"The replay's first step for {profile['events']:,} events (read the log, load their "
        "clusters, build the deliveries: what happens before the first event is sent), in "
        f"process under cProfile (CPU time): {profile['profiled_seconds']:.2f} s profiled. "
        "(The fan-out profile's \"JSON encoding\" category is the standard library's `json`: "
        "here it decodes the jsonb columns, `changes` and `labels`.)\n",
        "| category | share | | costliest functions (own time) | share |",
        "|---|---|---|---|---|",
    ]
    categories = [c for c in profile["categories"] if c["share"] >= 0.01]
    functions = profile["top_functions"][:6]
    for index in range(max(len(categories), len(functions))):
        left = (
            f"{categories[index]['category']} | {categories[index]['share']:.0%}"
            if index < len(categories)
            else " | "
        )
        right = (
            f"`{functions[index]['function']}` | {functions[index]['share']:.0%}"
            if index < len(functions)
            else " | "
        )
        rows.append(f"| {left} | | {right} |")
    return [*rows, ""]


def _reading(size: dict[str, Any], titles: dict[str, str]) -> str:
    lines = [
        "### Reading\n",
        "The server's p50 at 1 client taken apart with figures measured without a profiler "
        "(SQL floor; + fleetql's resolver in process beyond it; + the rest), and the replays:\n",
    ]
    for name, query in size["queries"].items():
        one = query["server"]["1"]
        sql, resolver = query["sql_floor"]["p50_ms"], query["resolver"]["p50_ms"]
        cap = 1000 / one["server_cpu_ms"] if one["server_cpu_ms"] else 0.0
        lines.append(
            f"- {titles[name]}: {one['p50_ms']:.1f} ms = SQL {sql:.1f} + session and ORM "
            f"{max(0.0, resolver - sql):.1f} + GraphQL, HTTP and the rest "
            f"{max(0.0, one['p50_ms'] - resolver):.1f}; {one['server_cpu_ms']:.1f} ms of server "
            f"CPU per request caps one process near {cap:.0f} req/s."
        )
    for depth, replay in size["replays"].items():
        per_event = 1000 * replay["total_ms"] / max(1, replay["events"])
        lines.append(
            f"- replay {int(depth):,} back: {replay['total_ms']:.0f} ms = resolver "
            f"{replay['resolver_ms']:.0f} (log read and clusters) + "
            f"{max(0.0, replay['total_ms'] - replay['resolver_ms']):.0f} sending events one by "
            f"one ({per_event:.0f} µs per event end to end; the floor is "
            f"{1000 * replay['floor_ms'] / max(1, replay['events']):.0f} µs)."
        )
    return "\n".join(lines) + "\n"
