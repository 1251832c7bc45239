"""A realistic fleet for the list benchmark, written straight into PostgreSQL with COPY.

Names like ``payments-eu-west-1-prod-00042``, 2 to 5 labels from the keys consoles filter on
(env, region, team, tier, cost-center, compliance), mostly HEALTHY clusters with a tail of
DEGRADED, UNHEALTHY, UNREACHABLE and UNKNOWN ones, node counts spread log-normally, and the last
error of each failing cluster. Seeded from its numbers, so every run builds the same fleet.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

__all__ = ["seed_fleet"]

TEAMS = "payments checkout search identity billing ledger catalog ads ml data platform messaging"
REGIONS = "us-east-1 us-west-2 eu-west-1 eu-central-1 ap-southeast-1 ap-northeast-1 sa-east-1"
ENVS = {"prod": 35, "staging": 25, "dev": 30, "qa": 10}
TIERS = ("web", "api", "db", "batch", "cache", "ml")
STATUSES = {"HEALTHY": 85, "DEGRADED": 7, "UNHEALTHY": 3, "UNREACHABLE": 3, "UNKNOWN": 2}
VERSIONS = ("v1.27.16", "v1.28.7", "v1.28.15", "v1.29.10", "v1.30.6", "v1.31.2")
FAILURES = {
    "UNHEALTHY": (("API_ERROR", "GET /readyz answered 500: [-]etcd failed: reason withheld"),),
    "UNREACHABLE": (
        ("TIMEOUT", "no answer from the API server within 30s"),
        ("CONNECTION_REFUSED", "connection refused (is the API server running?)"),
        ("TLS", "certificate verify failed: unable to get local issuer certificate"),
        ("UNAUTHORIZED", "the API server refused the credentials (401 Unauthorized)"),
        ("DNS", "name does not resolve"),
    ),
}
# The size of an encrypted simulator kubeconfig with a bearer token; lists never decrypt it.
KUBECONFIG_BYTES = 1_093
CLUSTER_COLUMNS = [
    "id",
    "name",
    "description",
    "labels",
    "api_server_url",
    "created_at",
    "updated_at",
]
CREDENTIAL_COLUMNS = [
    "cluster_id",
    "kubeconfig_ciphertext",
    "kubeconfig_key_id",
    "kubeconfig_format",
]
STATE_COLUMNS = [
    "cluster_id",
    "status",
    "node_count",
    "ready_node_count",
    "cpu_capacity_cores",
    "cpu_allocatable_cores",
    "cpu_usage_cores",
    "memory_capacity_bytes",
    "memory_allocatable_bytes",
    "memory_usage_bytes",
    "kubernetes_version",
    "last_heartbeat_at",
    "last_checked_at",
    "last_error_code",
    "last_error_message",
    "consecutive_failures",
    "next_check_at",
    "updated_at",
]
GIB = 2**30


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _cluster_row(number: int, rng: random.Random, *, now: datetime) -> tuple[Any, ...]:
    team, region = rng.choice(TEAMS.split()), rng.choice(REGIONS.split())
    env = _weighted(rng, ENVS)
    tier = rng.choice(TIERS)
    name = f"{team}-{region}-{env}-{number:05d}"
    optional = {"region": region, "team": team, "tier": tier, "cost-center": f"cc-{team}"}
    optional |= {"compliance": rng.choice(("pci", "sox", "none"))}
    extra = rng.sample(sorted(optional), rng.randint(1, 4))
    labels = {"env": env} | {key: optional[key] for key in extra}
    description = f"{team.title()} {env} cluster in {region} serving the {tier} tier"
    created = now - timedelta(days=rng.uniform(1, 730))
    return (
        uuid.UUID(int=rng.getrandbits(128), version=4),
        name,
        description,
        json.dumps(labels),
        f"https://{name}.k8s.{region}.example.com:6443",
        # The encrypted kubeconfig, drawn here so that the fleet stays the one earlier runs
        # measured; it goes to cluster_credentials, not to clusters.
        rng.randbytes(KUBECONFIG_BYTES),
        created,
        created + (now - created) * rng.random(),
    )


def _state_row(cluster_id: uuid.UUID, rng: random.Random, *, now: datetime) -> tuple[Any, ...]:
    status = _weighted(rng, STATUSES)
    if status == "UNKNOWN":
        nothing = (None,) * 9
        return (cluster_id, status, *nothing, None, None, None, None, 0, now, now)
    nodes = min(1000, max(1, int(rng.lognormvariate(2.5, 1.0))))
    ready = {"HEALTHY": nodes, "DEGRADED": nodes - rng.randint(1, max(1, nodes // 4))}.get(
        status, rng.randint(0, nodes // 10)
    )
    cores, memory = nodes * rng.choice((4, 8, 16, 32, 64)), nodes * rng.choice((16, 32, 64, 128))
    metrics = rng.random() > 0.1
    checked = now - timedelta(seconds=rng.uniform(0, 300))
    failed = status in FAILURES
    code, message = rng.choice(FAILURES[status]) if failed else (None, None)
    heartbeat = checked - timedelta(hours=rng.uniform(0.1, 72)) if failed else checked
    return (
        cluster_id,
        status,
        nodes,
        ready,
        Decimal(cores),
        Decimal(cores) * Decimal("0.95"),
        Decimal(round(cores * rng.uniform(0.1, 0.8), 3)) if metrics else None,
        memory * GIB,
        int(memory * GIB * 0.92),
        int(memory * GIB * rng.uniform(0.2, 0.85)) if metrics else None,
        rng.choice(VERSIONS),
        heartbeat,
        checked,
        code,
        message,
        rng.randint(1, 40) if failed else 0,
        checked + timedelta(minutes=5),
        checked,
    )


async def seed_fleet(connection: asyncpg.Connection, *, start: int, stop: int, key_id: str) -> None:
    """COPY clusters ``start``..``stop`` (numbered, reproducible) with their states, then VACUUM
    ANALYZE so that plans and index-only scans are those of a settled database."""
    rng, now = random.Random(start), datetime.now(UTC)
    rows = [_cluster_row(n, rng, now=now) for n in range(start, stop)]
    cluster_rows = [(*row[:5], *row[6:]) for row in rows]
    credential_rows = [(row[0], row[5], key_id, 1) for row in rows]
    state_rows = [_state_row(row[0], rng, now=now) for row in cluster_rows]
    await connection.copy_records_to_table(
        "clusters", records=cluster_rows, columns=CLUSTER_COLUMNS
    )
    await connection.copy_records_to_table(
        "cluster_credentials", records=credential_rows, columns=CREDENTIAL_COLUMNS
    )
    await connection.copy_records_to_table(
        "cluster_states", records=state_rows, columns=STATE_COLUMNS
    )
    await connection.execute("VACUUM ANALYZE clusters, cluster_credentials, cluster_states")
