"""The cluster client pool: one ApiClient per cluster, reused across checks.

Clients are built lazily from the decrypted kubeconfig, kept in an LRU of at most ``max_clients``,
and closed when evicted, when idle past ``idle_timeout``, when the cluster's kubeconfig changes,
and at shutdown. A client that a check is using is never closed under it: eviction marks it, and
the last user closes it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from kubernetes_asyncio.client import ApiClient

from fleetql.metrics.instruments import PoolMetrics

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    client: ApiClient
    fingerprint: str
    last_used: float
    users: int = 0
    retired: bool = False


@dataclass
class PoolStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    closed: int = 0


@dataclass
class ClientPool:
    max_clients: int = 100
    idle_timeout: float = 600.0
    clock: Callable[[], float] = time.monotonic
    stats: PoolStats = field(default_factory=PoolStats)
    metrics: PoolMetrics = field(default_factory=PoolMetrics)
    _entries: OrderedDict[uuid.UUID, _Entry] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self._entries)

    @asynccontextmanager
    async def client(
        self, cluster_id: uuid.UUID, fingerprint: str, build: Callable[[], ApiClient]
    ) -> AsyncIterator[ApiClient]:
        """Lend the cluster's client, building it (or rebuilding it, when ``fingerprint`` —
        a digest of the stored kubeconfig — changed) first."""
        entry = self._entries.get(cluster_id)
        if entry is not None and entry.fingerprint != fingerprint:
            await self._close_unused(self._retire(cluster_id))
            entry = None
        if entry is None:
            self.stats.misses += 1
            self.metrics.misses.inc()
            entry = _Entry(client=build(), fingerprint=fingerprint, last_used=self.clock())
            self._entries[cluster_id] = entry
            self.metrics.clients.set(len(self._entries))
            while len(self._entries) > self.max_clients:
                self.stats.evictions += 1
                self.metrics.evictions.inc()
                await self._close_unused(self._retire(next(iter(self._entries))))
        else:
            self.stats.hits += 1
            self.metrics.hits.inc()
            self._entries.move_to_end(cluster_id)
        entry.users += 1
        try:
            yield entry.client
        finally:
            entry.users -= 1
            entry.last_used = self.clock()
            if entry.retired and entry.users == 0:
                await self._close(entry)

    async def forget(self, cluster_id: uuid.UUID) -> None:
        """Drop a cluster's client (its kubeconfig changed or the cluster was removed)."""
        if cluster_id in self._entries:
            await self._close_unused(self._retire(cluster_id))

    async def close_idle(self) -> int:
        """Close clients unused for ``idle_timeout``; returns how many."""
        cutoff = self.clock() - self.idle_timeout
        idle = [key for key, entry in self._entries.items() if entry.last_used < cutoff]
        for key in idle:
            await self._close_unused(self._retire(key))
        return len(idle)

    async def aclose(self) -> None:
        for key in list(self._entries):
            await self._close_unused(self._retire(key))

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _retire(self, cluster_id: uuid.UUID) -> _Entry:
        """Take the entry out of the pool; whoever holds it last closes it."""
        entry = self._entries.pop(cluster_id)
        entry.retired = True
        self.metrics.clients.set(len(self._entries))
        return entry

    async def _close_unused(self, entry: _Entry) -> None:
        if entry.users == 0:
            await self._close(entry)

    async def _close(self, entry: _Entry) -> None:
        try:
            await entry.client.close()
        except Exception:  # a client failing to close must not stop the others
            logger.exception("closing a cluster client failed")
        self.stats.closed += 1
