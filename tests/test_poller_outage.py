"""The poller pauses while PostgreSQL is away and resumes, losing no cluster, when it is back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import yaml

from fleetql.access import SYSTEM
from fleetql.app import open_services
from fleetql.config import PollerSettings, load_settings
from fleetql.crypto import EncryptionKey
from fleetql.poller.pool import ClientPool
from fleetql.poller.worker import Poller
from fleetql.resolvers.context import Context
from fleetql.resolvers.imports import import_cluster
from fleetql.sim import Simulator
from tests.conftest import RestartablePostgres


async def eventually(condition: Callable[[], Awaitable[bool]], *, within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_poller_resumes_after_postgres_restarts(
    private_postgres: RestartablePostgres,
) -> None:
    settings = load_settings(
        environ={},
        overrides={
            "database": {"url": private_postgres.url},
            "encryption": {"key": EncryptionKey.generate().to_base64()},
        },
    )
    async with Simulator() as sim, open_services(settings) as services:
        names = [f"outage-{i}" for i in range(3)]
        for name in names:
            sim.add_cluster(name)
            result = await import_cluster(
                Context(services=services, request_id="test", principal=SYSTEM),
                name=name,
                kubeconfig=yaml.safe_dump(sim.kubeconfig(name)),
            )
            assert result.cluster is not None
        poller = Poller(
            sessions=services.sessions,
            cipher=services.cipher,
            # A check whose result cannot be written during the outage is retried when its
            # lease (4 x client_timeout + lease_margin) runs out: keep that short here.
            settings=PollerSettings(
                check_interval=timedelta(milliseconds=300),
                client_timeout=timedelta(seconds=1),
            ),
            pool=ClientPool(),
            idle_wait=0.05,
            lease_margin=timedelta(seconds=1),
            sleep=lambda seconds: asyncio.sleep(min(seconds, 0.1)),
        )
        task = asyncio.create_task(poller.run())
        try:

            async def all_checked() -> bool:
                return all(sim.cluster(name).requests > 0 for name in names)

            await eventually(all_checked, within=10, what="first checks")
            uri = private_postgres.uri
            await private_postgres.stop()  # PostgreSQL goes away

            async def noticed() -> bool:
                return poller.stats.database_errors > 0

            await eventually(noticed, within=10, what="the outage to be noticed")
            assert not task.done()
            await private_postgres.start()
            assert private_postgres.uri == uri
            before = {name: sim.cluster(name).requests for name in names}

            async def resumed() -> bool:
                return all(sim.cluster(name).requests > before[name] for name in names)

            await eventually(resumed, within=15, what="every cluster to be checked again")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await poller.pool.aclose()
