"""``Simulator``: many Kubernetes API servers behind one HTTPS port, owned by ``async with``.

Each cluster lives under its own path prefix, ``https://127.0.0.1:PORT/clusters/<name>``; a
kubeconfig ``server`` URL may carry a path and Kubernetes clients append theirs to it, so one
listener and one certificate serve thousands of clusters. The uvicorn server runs as a task of the
current event loop and is stopped, with every task the simulator started, on exit.

The server asks for (but does not require) a client certificate: one signed by the simulator's CA
authenticates its CN, as kube-apiserver's x509 authenticator does, so a kubeconfig may carry a
token or a client certificate (``kubeconfig(name, auth="client-certificate")``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import socket
import ssl
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
import yaml

from fleetql.sim.app import ADMIN_USER, CLUSTER_PREFIX, SimulatorApp
from fleetql.sim.cluster import RequestGauge, SimCluster
from fleetql.sim.connections import ConnectionRegistry, tracking_protocol
from fleetql.sim.ports import DedicatedPort
from fleetql.sim.spec import ClusterSpec
from fleetql.sim.tls import CertificateAuthority, KeyPair

__all__ = ["Simulator"]

_log = logging.getLogger(__name__)
_START_TIMEOUT = 10.0
_GRACE = 0.3


class Simulator:
    """A running simulator: add clusters, hand out kubeconfigs, change clusters between polls.

    ``async with Simulator() as sim:`` binds 127.0.0.1 on a free port (or ``port``) with a fresh
    CA; leaving the block stops the server, releases delayed requests and closes every port.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._port = 0
        self._clusters: dict[str, SimCluster] = {}
        self._ports: list[DedicatedPort] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._connections: ConnectionRegistry = {}
        self._load = RequestGauge()
        self._authority: CertificateAuthority | None = None
        self._impostor: ssl.SSLContext | None = None
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._authority = CertificateAuthority()
        server_pair = self._authority.issue_server(_certificate_hosts(self._host))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._requested_port))
            self._port = sock.getsockname()[1]
            with tempfile.TemporaryDirectory(prefix="fleetql-sim-") as directory:
                # uvicorn loads the key pair from files; they are read at config load, then deleted.
                cert_file, key_file = _write_key_pair(Path(directory), server_pair)
                ca_file = Path(directory) / "ca.crt"
                ca_file.write_bytes(self._authority.ca_pem)
                app = SimulatorApp(
                    self._clusters,
                    stopping=self._stopping,
                    connections=self._connections,
                    load=self._load,
                )
                config = uvicorn.Config(
                    app,
                    http=tracking_protocol(self._connections),
                    ssl_certfile=cert_file,
                    ssl_keyfile=key_file,
                    ssl_ca_certs=ca_file,
                    ssl_cert_reqs=ssl.CERT_OPTIONAL,
                    lifespan="off",
                    log_config=None,
                    access_log=False,
                    server_header=False,
                    timeout_keep_alive=30,
                    timeout_graceful_shutdown=5,
                    backlog=4096,
                )
                config.load()
            self._server = uvicorn.Server(config)
            self._serve_task = asyncio.create_task(
                self._server.serve(sockets=[sock]), name="sim.uvicorn"
            )
            await self._wait_started()
        except BaseException:
            await self._shutdown()
            sock.close()
            raise
        # From here on uvicorn's server owns the socket and closes it on shutdown.
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._shutdown()

    @property
    def port(self) -> int:
        """The shared HTTPS port."""
        return self._port

    @property
    def base_url(self) -> str:
        """``https://host:port`` of the shared listener."""
        return f"https://{self._host}:{self._port}"

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate (PEM) that signed the server certificate; clients trust this."""
        return self._running_authority().ca_pem

    @property
    def in_flight(self) -> int:
        """Requests being handled now across all clusters, including delayed ones."""
        return self._load.in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most requests handled at once across all clusters since start or ``reset_peaks``."""
        return self._load.peak_in_flight

    def reset_peaks(self) -> None:
        """Measure ``peak_in_flight`` afresh, the simulator's and every cluster's."""
        self._load.reset_peak()
        for cluster in self._clusters.values():
            cluster.load.reset_peak()

    @property
    def clusters(self) -> dict[str, SimCluster]:
        """Every cluster by name (a copy; add clusters with ``add_cluster``)."""
        return dict(self._clusters)

    def add_cluster(self, name: str, *, own_port: bool = False, **spec: Any) -> SimCluster:
        """Add a cluster; ``spec`` holds ``ClusterSpec`` fields, ``token`` defaults to a random one.

        ``own_port=True`` gives it a port of its own, so that ``cluster.down = True`` can refuse
        connections and ``spec.wrong_ca = True`` can present another CA's certificate (see
        ``ports.py``); otherwise it shares the simulator's port.
        """
        if self._server is None:
            raise RuntimeError("the simulator is not running; use it inside 'async with'")
        if not name or "/" in name or name in self._clusters:
            raise ValueError(f"cluster name {name!r} is empty, has a '/' or is already taken")
        spec.setdefault("token", secrets.token_urlsafe(24))
        cluster_spec = ClusterSpec(name=name, **spec)
        if cluster_spec.wrong_ca and not own_port:
            raise ValueError(
                f"cluster {name!r}: wrong_ca needs own_port=True, since the shared port's "
                "certificate serves every other cluster too"
            )
        port = None
        base = self.base_url
        if own_port:

            def impostor() -> ssl.SSLContext | None:
                # ``cluster`` is bound below, before the port's accept loop first runs.
                return self._impostor_context() if cluster.spec.wrong_ca else None

            port = DedicatedPort(
                host=self._host, target_port=self._port, spawn=self._spawn, impostor=impostor
            )
            port.open()
            self._ports.append(port)
            base = f"https://{self._host}:{port.port}"
        cluster = SimCluster(cluster_spec, server_url=f"{base}{CLUSTER_PREFIX}{name}", port=port)
        self._clusters[name] = cluster
        return cluster

    def fleet(
        self, count: int, nodes: int = 50, prefix: str = "sim", **spec: Any
    ) -> list[SimCluster]:
        """Add ``count`` clusters named ``<prefix>-001`` onwards with ``nodes`` nodes each."""
        width = max(3, len(str(count)))
        return [
            self.add_cluster(f"{prefix}-{number:0{width}d}", node_count=nodes, **spec)
            for number in range(1, count + 1)
        ]

    def cluster(self, name: str) -> SimCluster:
        """The named cluster; KeyError names it if there is none."""
        try:
            return self._clusters[name]
        except KeyError:
            raise KeyError(f"no simulated cluster named {name!r}") from None

    def server_url(self, name: str) -> str:
        """The cluster's API server URL, as a kubeconfig's ``server`` holds it."""
        return self.cluster(name).server_url

    def kubeconfig(
        self,
        name: str,
        *,
        token: str | None = None,
        auth: Literal["token", "client-certificate"] = "token",
        common_name: str = ADMIN_USER,
    ) -> dict[str, Any]:
        """A complete kubeconfig for one cluster: CA data and a bearer-token user.

        ``token`` replaces the cluster's real token, e.g. to test a rejected credential.
        ``auth="client-certificate"`` gives the user a fresh client certificate and key from the
        simulator's CA instead, authenticating as ``common_name``.
        """
        cluster = self.cluster(name)
        credentials: dict[str, str]
        if auth == "client-certificate":
            if token is not None:
                raise ValueError("token= applies to auth='token' only")
            pair = self._running_authority().issue_client(common_name)
            credentials = {
                "client-certificate-data": base64.b64encode(pair.cert_pem).decode(),
                "client-key-data": base64.b64encode(pair.key_pem).decode(),
            }
        elif auth == "token":
            credentials = {"token": token or cluster.spec.token}
        else:
            raise ValueError(f"auth must be 'token' or 'client-certificate', not {auth!r}")
        user = f"{name}-admin"
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": name,
                    "cluster": {
                        "server": cluster.server_url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
            "current-context": name,
            "preferences": {},
        }

    def kubeconfig_yaml(self, name: str, **options: Any) -> str:
        """``kubeconfig(name, **options)`` as the YAML text a file or an import holds."""
        return yaml.safe_dump(self.kubeconfig(name, **options), sort_keys=False)

    async def wait_closed(self) -> None:
        """Wait until the server stops (e.g. on SIGINT in the foreground runner)."""
        if self._serve_task is not None:
            await asyncio.shield(self._serve_task)

    def _running_authority(self) -> CertificateAuthority:
        if self._authority is None:
            raise RuntimeError("the simulator is not running; use it inside 'async with'")
        return self._authority

    def _impostor_context(self) -> ssl.SSLContext:
        """A server TLS context for the same hosts, from a CA no kubeconfig trusts (made once)."""
        if self._impostor is None:
            authority = CertificateAuthority("fleetql-sim-impostor-ca")
            pair = authority.issue_server(_certificate_hosts(self._host))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory(prefix="fleetql-sim-") as directory:
                cert_file, key_file = _write_key_pair(Path(directory), pair)
                context.load_cert_chain(cert_file, key_file)
            self._impostor = context
        return self._impostor

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("simulator task %s failed", task.get_name(), exc_info=task.exception())

    async def _wait_started(self) -> None:
        assert self._server is not None and self._serve_task is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()  # raises what stopped it
                raise RuntimeError("the simulator's server stopped while starting")
            if loop.time() > deadline:
                raise TimeoutError(f"the simulator did not start within {_START_TIMEOUT} s")
            await asyncio.sleep(0.005)

    async def _shutdown(self) -> None:
        self._stopping.set()
        for port in self._ports:
            await port.aclose()
        if self._server is not None and self._serve_task is not None:
            self._server.should_exit = True
            # An idle keep-alive client never answers TLS close_notify, so uvicorn would wait for
            # it until its graceful timeout: give it a moment, then reset what is still open.
            await asyncio.wait({self._serve_task}, timeout=_GRACE)
            if not self._serve_task.done():
                for connection in list(self._server.server_state.connections):
                    transport = getattr(connection, "transport", None)
                    if transport is not None:
                        transport.abort()
            try:
                await self._serve_task
            except asyncio.CancelledError:
                if not self._serve_task.cancelled():
                    raise
        if self._tasks:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server = None


def _write_key_pair(directory: Path, pair: KeyPair) -> tuple[Path, Path]:
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert_file.write_bytes(pair.cert_pem)
    key_file.touch(mode=0o600)
    key_file.write_bytes(pair.key_pem)
    return cert_file, key_file


def _certificate_hosts(host: str) -> tuple[str, ...]:
    hosts = ["127.0.0.1", "localhost"]
    if host not in hosts and host not in ("0.0.0.0", ""):
        hosts.append(host)
    return tuple(hosts)
