"""Table pieces both HTTP query benchmarks' reports (list and history queries) render alike."""

from __future__ import annotations

from typing import Any

__all__ = ["layer_table", "work_node"]


def work_node(plan: str) -> str:
    """The first plan node that does the work: past Limit, Aggregate, Sort and Gather."""
    wrappers = ("Limit", "Aggregate", "Finalize", "Partial", "Gather", "Workers", "Buffers", "Sort")
    for line in plan.splitlines():
        node = line.strip().removeprefix("->").strip().split("  (")[0]
        if node and not node.startswith(wrappers):
            return node.replace("|", "\\|")
    return "?"


def layer_table(result: dict[str, Any], size: dict[str, Any], titles: dict[str, str]) -> str:
    """Server CPU per request by layer: the profile's shares times the CPU measured without it."""
    profiles = result["profile"]["queries"]
    layers = sorted(
        {layer for profile in profiles.values() for layer in profile["layers_percent"]},
        key=lambda layer: -sum(p["layers_percent"].get(layer, 0.0) for p in profiles.values()),
    )
    names = list(profiles)
    rows = [
        "Server CPU by layer (cProfile of the same app in process; shares scaled to the server "
        "CPU per request measured at 1 client without a profiler, ms):\n",
        "| layer | " + " | ".join(titles[name] for name in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for layer in layers:
        cells = []
        for name in names:
            cpu = size["queries"][name]["server"]["1"]["server_cpu_ms"]
            cells.append(f"{cpu * profiles[name]['layers_percent'].get(layer, 0.0) / 100:.2f}")
        rows.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
