"""The poller: claims due clusters from PostgreSQL and checks them, a bounded number at a time.

It runs as a task in ``fleetql serve`` or alone as ``fleetql poll``. Everything it waits on is
bounded (the client timeout per request, the lease per claim), so a hung cluster costs one slot
for at most the timeout, and a database outage pauses it without losing a cluster: unfinished
claims expire and the clusters become due again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import yaml
from kubernetes_asyncio.client import ApiClient
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleetql.config import PollerSettings
from fleetql.crypto import DecryptionError, EncryptedBlob, KubeconfigCipher
from fleetql.db.states import (
    DueCluster,
    StateChange,
    claim_due_clusters,
    record_check,
    release_claims,
)
from fleetql.logs import log_context
from fleetql.metrics.instruments import PollerMetrics
from fleetql.poller.assessment import damp, failed_values, observed_values
from fleetql.poller.client import ClientPolicy, build_api_client
from fleetql.poller.pool import ClientPool
from fleetql.poller.probe import ERROR_CODES, CheckFailed, RetryAfter, probe

logger = logging.getLogger(__name__)

# libyaml's parser when the wheel has it (~10 times faster); the YAML is our own, validated.
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Publish = Callable[[StateChange], Awaitable[None]]


async def publish_nothing(change: StateChange) -> None:
    """The default hook, until subscriptions deliver events."""
    return None


@dataclass
class PollerStats:
    checks: int = 0
    failures: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    database_errors: int = 0


# How long ``stop`` waits for a claim in progress to come back.
_CLAIM_WAIT = 5.0


@dataclass
class Poller:
    sessions: async_sessionmaker[AsyncSession]
    cipher: KubeconfigCipher
    settings: PollerSettings
    pool: ClientPool
    publish: Publish = publish_nothing
    # The import rules a stored kubeconfig is checked against again before it is used.
    client_policy: ClientPolicy = field(default_factory=ClientPolicy)
    idle_wait: float = 1.0
    # Added to the requests' worst case to make a claim's lease; a dead replica's claims return
    # to the pool after it.
    lease_margin: timedelta = timedelta(seconds=30)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    stats: PollerStats = field(default_factory=PollerStats)
    metrics: PollerMetrics = field(default_factory=PollerMetrics)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    # Clusters claimed and not yet recorded: what ``stop`` gives back.
    _claimed: set[uuid.UUID] = field(default_factory=set)
    _runner: asyncio.Task[Any] | None = None
    # The claim in progress, if any: ``stop`` lets it finish so its claims can be released.
    _claiming: asyncio.Future[list[DueCluster]] | None = None
    _stopped: bool = False

    def __post_init__(self) -> None:
        self.metrics.declare_results(("ok", *ERROR_CODES))

    @property
    def lease(self) -> timedelta:
        # Long enough for a check's requests (readyz, version, node pages, metrics) to time out.
        return self.settings.client_timeout * 4 + self.lease_margin

    async def run(self) -> None:
        """Claim and check until cancelled or stopped; in-flight checks are cancelled with it."""
        if self._stopped:
            return
        self._runner = asyncio.current_task()
        backoff = 1.0
        try:
            while not self._stopped:
                free = self.settings.max_concurrency - len(self._tasks)
                claimed: list[DueCluster] = []
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                        backoff = 1.0
                    except (OSError, OperationalError, DBAPIError) as error:
                        self.stats.database_errors += 1
                        self.metrics.database_errors.inc()
                        logger.warning(
                            "cannot claim clusters (%s); retrying in %.0fs",
                            type(error).__name__,
                            backoff,
                        )
                        await self.sleep(backoff)
                        backoff = min(backoff * 2, 30.0)
                        continue
                for due in claimed:
                    self._start(due)
                if not claimed or len(self._tasks) >= self.settings.max_concurrency:
                    await self._wait_for_slot_or_timeout()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Stop claiming, cancel the checks in flight and release their claims, so another
        replica checks those clusters at once rather than when the lease runs out."""
        self._stopped = True
        runner = self._runner
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
            await asyncio.wait([runner])
        if self._claiming is not None and not self._claiming.done():
            # Bounded: a claim is one short statement; a database that does not answer leaves
            # its claims to the lease, as a crash would.
            await asyncio.wait([self._claiming], timeout=_CLAIM_WAIT)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        held, self._claimed = list(self._claimed), set()
        if not held:
            return
        try:
            async with self.sessions() as session:
                released = await release_claims(session, held)
                await session.commit()
        except (OSError, OperationalError, DBAPIError) as error:
            # The leases still run out: the clusters come back, only later.
            logger.warning("cannot release %d claims: %s", len(held), type(error).__name__)
            return
        logger.info("released %d claims for another replica", released)

    async def sweep(self) -> int:
        """Check every cluster that is due now, then return how many were checked (for tests,
        benchmarks and ``fleetql poll --once``)."""
        checked = 0
        while claimed := await self._claim(self.settings.max_concurrency):
            await asyncio.gather(*(self.check(due) for due in claimed))
            checked += len(claimed)
        return checked

    async def _claim(self, limit: int) -> list[DueCluster]:
        """Claim up to ``limit`` clusters. The claim runs as a task of its own, shielded: a
        stop that cancels the runner mid-claim (after PostgreSQL committed, before the rows
        came back) must still learn which clusters were claimed, or their leases would hold
        them from every replica until they ran out. ``stop`` waits for it."""
        claiming = asyncio.ensure_future(self._claim_and_hold(limit))
        self._claiming = claiming
        return await asyncio.shield(claiming)

    async def _claim_and_hold(self, limit: int) -> list[DueCluster]:
        async with self.sessions() as session:
            claimed = await claim_due_clusters(session, limit=limit, lease=self.lease)
            await session.commit()
        self._claimed.update(due.id for due in claimed)
        return claimed

    def _start(self, due: DueCluster) -> None:
        task = asyncio.create_task(self.check(due), name=f"poller.check.{due.name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("check task %s crashed", task.get_name(), exc_info=error)

    async def _wait_for_slot_or_timeout(self) -> None:
        self._slot_freed.clear()
        try:
            async with asyncio.timeout(self.idle_wait):
                await self._slot_freed.wait()
        except TimeoutError:
            pass

    async def check(self, due: DueCluster) -> None:
        """Check one claimed cluster and record the result; publish after the commit."""
        with log_context(cluster_id=str(due.id)):
            await self._check(due)

    async def _check(self, due: DueCluster) -> None:
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        self.metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            values, heartbeat, next_check_in, result = await self._observe(due)
        finally:
            self.stats.in_flight -= 1
            self.metrics.in_flight.dec()
        self.metrics.observe_check(result, time.perf_counter() - started)
        self.stats.checks += 1
        try:
            async with self.sessions() as session:
                change = await record_check(
                    session, due.id, values, next_check_in=next_check_in, heartbeat=heartbeat
                )
                await session.commit()
            self._claimed.discard(due.id)
        except (OSError, OperationalError, DBAPIError) as error:
            # The claim's lease expires and the cluster is checked again: nothing is lost.
            self.stats.database_errors += 1
            self.metrics.database_errors.inc()
            logger.warning("cannot record the check of %s: %s", due.name, type(error).__name__)
            return
        if change is not None:
            await self.publish(change)

    async def _observe(self, due: DueCluster) -> tuple[dict[str, object], bool, timedelta, str]:
        """The new column values, whether the check succeeded, when to check next, and the
        result (``ok`` or the error code)."""
        timeout = self.settings.client_timeout.total_seconds()
        try:
            # Decrypted and parsed only when a client is built: a pooled one needs neither.
            # Unchanged by a key rotation's rewrap: pooled clients survive it.
            fingerprint = EncryptedBlob(
                format_version=due.kubeconfig_format,
                key_id=due.kubeconfig_key_id,
                payload=due.kubeconfig_ciphertext,
            ).content_fingerprint()

            def build() -> ApiClient:
                return build_api_client(self._kubeconfig(due), self.client_policy)

            retry_after = RetryAfter(max_wait=self.client_policy.max_retry_after, sleep=self.sleep)
            async with self.pool.client(due.id, fingerprint, build) as api:
                observation = await probe(api, request_timeout=timeout, retry_after=retry_after)
        except CheckFailed as failure:
            self.stats.failures += 1
            failures = due.consecutive_failures + 1
            logger.info(
                "check of %s failed (%s): %s", due.name, failure.error.code, failure.error.message
            )
            values = failed_values(failure, consecutive_failures=failures)
            if failure.keeps_status:  # throttled: says nothing about the cluster's health
                values |= {
                    "status": due.status,
                    "pending_status": due.pending_status,
                    "pending_count": due.pending_count,
                }
            else:
                values = self._damp(values, due)
            retrying = failures <= self.settings.retry_attempts or bool(values["pending_status"])
            delay = self.settings.retry_delay if retrying else self._interval(due)
            return values, False, delay, failure.error.code
        values = self._damp(observed_values(observation), due)
        # A status seen once is confirmed (or not) soon, not a whole interval later.
        pending = values["pending_status"] is not None
        return values, True, self.settings.retry_delay if pending else self._interval(due), "ok"

    def _damp(self, values: dict[str, object], due: DueCluster) -> dict[str, object]:
        return damp(
            values,
            current=due.status,
            pending=due.pending_status,
            pending_count=due.pending_count,
            threshold=self.settings.status_threshold,
        )

    def _kubeconfig(self, due: DueCluster) -> object:
        blob = EncryptedBlob(
            due.kubeconfig_format, due.kubeconfig_key_id, due.kubeconfig_ciphertext
        )
        try:
            plaintext = self.cipher.decrypt(blob, cluster_id=due.id)
        except DecryptionError as error:
            raise CheckFailed("INVALID_KUBECONFIG", str(error)) from None
        document: object = yaml.load(plaintext, Loader=_SAFE_LOADER)
        return document

    def _interval(self, due: DueCluster) -> timedelta:
        """Spread checks over the interval: a first check lands anywhere in it (so a fleet
        imported at once does not stay in lockstep), later ones vary by ±10 %."""
        interval = self.settings.check_interval
        if due.last_checked_at is None:
            return interval * random.uniform(0.1, 1.0)
        return interval * random.uniform(0.9, 1.1)
