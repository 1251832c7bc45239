"""A cluster's own TCP port, forwarded to the shared TLS server, that can be shut to play "down".

All clusters share one HTTPS listener, and an HTTP handler cannot refuse a TCP connection. A
cluster created with ``own_port=True`` instead gets this listener: bytes are piped untouched to the
shared server (TLS still ends there, the certificate covers 127.0.0.1), and closing it makes new
connections fail with a real ECONNREFUSED while open ones are reset, just as when an apiserver or
its load balancer dies. Reopening listens on the same port, so kubeconfigs stay valid.

While ``impostor`` returns a TLS context, TLS ends here instead, with that context's certificate
from another CA: the client's verification fails as when a cluster's CA was rotated under it or a
proxy intercepts. A client that skips verification gets nothing but a reset.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from fleetql.sim.connections import reset_transport

__all__ = ["DedicatedPort"]

_log = logging.getLogger(__name__)
_CHUNK = 65536
_HANDSHAKE_TIMEOUT = 5.0

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]
Impostor = Callable[[], ssl.SSLContext | None]


class DedicatedPort:
    """A listener on ``host:port`` piping every connection to ``host:target_port``.

    ``open()`` and ``close()`` are synchronous so a test can flip a cluster up or down with a
    plain assignment; the socket is bound and listening before ``open()`` returns, so no
    connection is refused while the accept loop starts in a task given by ``spawn``.
    """

    def __init__(
        self, *, host: str, target_port: int, spawn: Spawn, impostor: Impostor | None = None
    ) -> None:
        self._host = host
        self._target_port = target_port
        self._spawn = spawn
        self._impostor = impostor
        self._port = 0
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        """The port clients connect to; fixed once first opened."""
        return self._port

    @property
    def is_open(self) -> bool:
        """Whether connections are accepted (the cluster is "up")."""
        return self._sock is not None

    def open(self) -> None:
        """Listen (again, on the same port) and forward connections."""
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
            sock.listen(512)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        self._sock = sock
        self._spawn(self._serve(sock), f"sim.port.{self._port}")

    def close(self) -> None:
        """Stop listening and reset every open connection; new ones are refused."""
        sock, self._sock = self._sock, None
        server, self._server = self._server, None
        if server is not None:
            server.close()
        elif sock is not None:
            sock.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def aclose(self) -> None:
        """Close, then wait until every forwarding handler has finished."""
        self.close()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, sock: socket.socket) -> None:
        if self._sock is not sock:  # closed before the accept loop got to run
            return
        server = await asyncio.start_server(self._forward, sock=sock)
        if self._sock is not sock:
            server.close()
            return
        self._server = server

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            impostor = self._impostor() if self._impostor is not None else None
            if impostor is not None:
                await writer.start_tls(impostor, ssl_handshake_timeout=_HANDSHAKE_TIMEOUT)
                return
            upstream_reader, upstream = await asyncio.open_connection(self._host, self._target_port)
            self._writers.add(upstream)
            async with asyncio.TaskGroup() as group:
                group.create_task(_pipe(reader, upstream))
                group.create_task(_pipe(upstream_reader, writer))
        except (OSError, ExceptionGroup) as error:
            _log.debug("forwarding on port %s ended: %r", self._port, error)
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self._writers.discard(end)
                    end.transport.abort()
            if task is not None:
                self._handlers.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the half-close on so HTTP keep-alive ends cleanly; pass a reset
    on as a reset, so a client sees the server's crash and not an orderly close."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionResetError:
        reset_transport(writer.transport)
    except ConnectionError:
        pass
