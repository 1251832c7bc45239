"""The poller's parsing, on responses captured from a real kube-apiserver v1.28.7."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from fleetql.poller.nodes import NodeListError, is_ready, summarize_nodes, summarize_usage

CAPTURES = Path(__file__).resolve().parent / "k8s_captures"


def capture(name: str) -> dict:
    return orjson.loads((CAPTURES / name).read_bytes())


def test_captured_node_list_sums_to_the_true_answer() -> None:
    summary = summarize_nodes(capture("nodes.json")["items"])
    assert summary.node_count == 3
    assert summary.ready_node_count == 2
    assert summary.cpu_capacity_cores == Decimal(14)
    assert summary.cpu_allocatable_cores == Decimal("12.5")
    assert summary.memory_capacity_bytes == 56 * 1024**3
    assert summary.memory_allocatable_bytes == 50 * 1024**3


def test_captured_pages_sum_like_the_whole_list() -> None:
    first, second = capture("nodes-limit2-page1.json"), capture("nodes-limit2-page2.json")
    assert first["metadata"]["continue"]
    summary = summarize_nodes(first["items"] + second["items"])
    assert summary == summarize_nodes(capture("nodes.json")["items"])


def test_captured_version() -> None:
    assert capture("version.json")["gitVersion"] == "v1.28.7"


def test_node_without_ready_condition_is_not_ready() -> None:
    assert not is_ready({"status": {"conditions": [{"type": "MemoryPressure", "status": "False"}]}})
    assert not is_ready({})
    assert is_ready({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert not is_ready({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})


def test_malformed_quantity_is_a_node_list_error() -> None:
    with pytest.raises(NodeListError, match="node 1"):
        summarize_nodes([{"status": {"capacity": {"cpu": "lots"}}}])


def test_usage_sums_metrics_items() -> None:
    usage = summarize_usage(
        [
            {"usage": {"cpu": "250m", "memory": "1Gi"}},
            {"usage": {"cpu": "1500000000n", "memory": "512Mi"}},
        ]
    )
    assert usage.cpu_usage_cores == Decimal("1.75")
    assert usage.memory_usage_bytes == 1024**3 + 512 * 1024**2
