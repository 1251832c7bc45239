"""From what a check saw (or why it failed) to the state row's new values."""

from __future__ import annotations

from typing import Any

from fleetql.db.models import ClusterStatus
from fleetql.poller.probe import CheckError, CheckFailed, Observation


def assess(observation: Observation) -> tuple[ClusterStatus, CheckError | None]:
    """The status of a cluster whose API answered, and the error worth showing, if any."""
    if not observation.ready:
        return ClusterStatus.UNHEALTHY, CheckError("API_ERROR", observation.not_ready_reason or "")
    nodes = observation.nodes
    if nodes is None:
        return ClusterStatus.DEGRADED, observation.nodes_error
    if nodes.ready_node_count == 0:
        return ClusterStatus.UNHEALTHY, None
    if nodes.ready_node_count < nodes.node_count:
        return ClusterStatus.DEGRADED, None
    return ClusterStatus.HEALTHY, None


def observed_values(observation: Observation) -> dict[str, Any]:
    """Column values after a completed check: a success clears the error and failure count."""
    status, error = assess(observation)
    nodes, usage = observation.nodes, observation.usage
    values: dict[str, Any] = {
        "status": status.value,
        "kubernetes_version": observation.kubernetes_version,
        "last_error_code": error.code if error else None,
        "last_error_message": error.message if error else None,
        "consecutive_failures": 0,
        "cpu_usage_cores": usage.cpu_usage_cores if usage else None,
        "memory_usage_bytes": usage.memory_usage_bytes if usage else None,
    }
    if nodes is not None:
        values |= {
            "node_count": nodes.node_count,
            "ready_node_count": nodes.ready_node_count,
            "cpu_capacity_cores": nodes.cpu_capacity_cores,
            "cpu_allocatable_cores": nodes.cpu_allocatable_cores,
            "memory_capacity_bytes": nodes.memory_capacity_bytes,
            "memory_allocatable_bytes": nodes.memory_allocatable_bytes,
        }
    return values


def failed_values(failure: CheckFailed, *, consecutive_failures: int) -> dict[str, Any]:
    """Column values after a failed check; whether its status is recorded yet is damping's
    decision (see ``damp``), the same rule as for every other change."""
    status = ClusterStatus.UNHEALTHY if failure.reachable else ClusterStatus.UNREACHABLE
    return {
        "status": status.value,
        "last_error_code": failure.error.code,
        "last_error_message": failure.error.message,
        "consecutive_failures": consecutive_failures,
    }


def damp(
    values: dict[str, Any],
    *,
    current: str,
    pending: str | None,
    pending_count: int,
    threshold: int,
) -> dict[str, Any]:
    """Record a new status only once ``threshold`` checks in a row saw it, so that one timeout
    does not flip HEALTHY to UNREACHABLE and back; meanwhile it is ``pending_status``. A first
    check (from UNKNOWN) is recorded at once. Everything else a check saw is recorded anyway."""
    observed = values["status"]
    if current == ClusterStatus.UNKNOWN.value or observed == current:
        return values | {"pending_status": None, "pending_count": 0}
    count = pending_count + 1 if pending == observed else 1
    if count >= threshold:
        return values | {"pending_status": None, "pending_count": 0}
    return values | {"status": current, "pending_status": observed, "pending_count": count}
