"""Summing a node list into what the fleet view shows: counts, CPU and memory.

Works on the raw JSON (dicts from orjson), not kubernetes_asyncio models: turning a 50-node list
into model objects costs about 15 times the raw parse, and the poller does this for every cluster
every interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

from fleetql.quantities import memory_bytes, parse_quantity


class NodeListError(ValueError):
    """A node list that is not shaped like one; the message says where."""


@dataclass(frozen=True)
class NodeSummary:
    node_count: int
    ready_node_count: int
    cpu_capacity_cores: Decimal
    cpu_allocatable_cores: Decimal
    memory_capacity_bytes: int
    memory_allocatable_bytes: int


@dataclass(frozen=True)
class UsageSummary:
    cpu_usage_cores: Decimal
    memory_usage_bytes: int


# Nodes of one cluster repeat the same few quantity strings; parsing each once saves most of the
# per-node cost.
@lru_cache(maxsize=4096)
def _cores(text: str) -> Decimal:
    return parse_quantity(text)


@lru_cache(maxsize=4096)
def _bytes(text: str) -> int:
    return memory_bytes(text)


def is_ready(node: Mapping[str, Any]) -> bool:
    """A node is Ready when its Ready condition says "True"; a missing condition is not Ready."""
    for condition in node.get("status", {}).get("conditions") or ():
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def summarize_nodes(nodes: Iterable[Mapping[str, Any]]) -> NodeSummary:
    count = ready = 0
    cpu_capacity = cpu_allocatable = Decimal(0)
    memory_capacity = memory_allocatable = 0
    try:
        for node in nodes:
            count += 1
            ready += is_ready(node)
            status = node.get("status") or {}
            capacity = status.get("capacity") or {}
            allocatable = status.get("allocatable") or {}
            cpu_capacity += _cores(capacity.get("cpu", "0"))
            cpu_allocatable += _cores(allocatable.get("cpu", "0"))
            memory_capacity += _bytes(capacity.get("memory", "0"))
            memory_allocatable += _bytes(allocatable.get("memory", "0"))
    except (AttributeError, TypeError, ValueError) as error:
        raise NodeListError(f"node {count} is malformed: {error}") from None
    return NodeSummary(
        node_count=count,
        ready_node_count=ready,
        cpu_capacity_cores=cpu_capacity,
        cpu_allocatable_cores=cpu_allocatable,
        memory_capacity_bytes=memory_capacity,
        memory_allocatable_bytes=memory_allocatable,
    )


def add_summaries(first: NodeSummary, second: NodeSummary) -> NodeSummary:
    """The summary of two disjoint sets of nodes (pages of one list)."""
    return NodeSummary(
        node_count=first.node_count + second.node_count,
        ready_node_count=first.ready_node_count + second.ready_node_count,
        cpu_capacity_cores=first.cpu_capacity_cores + second.cpu_capacity_cores,
        cpu_allocatable_cores=first.cpu_allocatable_cores + second.cpu_allocatable_cores,
        memory_capacity_bytes=first.memory_capacity_bytes + second.memory_capacity_bytes,
        memory_allocatable_bytes=first.memory_allocatable_bytes + second.memory_allocatable_bytes,
    )


EMPTY_SUMMARY = NodeSummary(0, 0, Decimal(0), Decimal(0), 0, 0)


def summarize_usage(items: Iterable[Mapping[str, Any]]) -> UsageSummary:
    """Sum a metrics.k8s.io NodeMetricsList's usage."""
    cpu = Decimal(0)
    memory = 0
    try:
        for item in items:
            usage = item.get("usage") or {}
            cpu += _cores(usage.get("cpu", "0"))
            memory += _bytes(usage.get("memory", "0"))
    except (AttributeError, TypeError, ValueError) as error:
        raise NodeListError(f"node metrics are malformed: {error}") from None
    return UsageSummary(cpu_usage_cores=cpu, memory_usage_bytes=memory)
