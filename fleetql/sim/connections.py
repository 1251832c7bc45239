"""The simulator's open TLS connections, by client address, for what an ASGI app cannot reach.

uvicorn (0.54) puts no ``tls`` extension in the ASGI scope, and an ASGI app cannot drop a
connection without answering. Both need the transport, so the HTTP protocol below records each
connection's verified client certificate and a way to reset it under the client's address, which
is the scope's ``client`` (proxy headers are off, so nobody can forge it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["Connection", "ConnectionRegistry", "reset_transport", "tracking_protocol"]

ConnectionRegistry = dict[tuple[str, int], "Connection"]

# SO_LINGER on, timeout 0: close() sends a TCP RST instead of a FIN, as a crashed peer does.
_LINGER_ZERO = struct.pack("ii", 1, 0)


@dataclass(frozen=True)
class Connection:
    """One client connection: who its certificate says it is, and its transport."""

    client_user: str | None  # CN of a client certificate the simulator's CA signed, if one was sent
    transport: asyncio.Transport

    def reset(self) -> None:
        """Drop the connection with a TCP reset, without any HTTP response or TLS close_notify."""
        reset_transport(self.transport)


def reset_transport(transport: asyncio.WriteTransport) -> None:
    """Abort ``transport`` so that the peer sees ECONNRESET rather than an orderly close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by the peer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()


def tracking_protocol(registry: ConnectionRegistry) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, recording each connection in ``registry`` while it is open."""

    class TrackingProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.client is not None:
                registry[self.client] = Connection(_client_user(transport), transport)

        def connection_lost(self, exc: Exception | None) -> None:
            # A reset frees the client's port at once; a new connection may hold it already.
            if self.client is not None:
                entry = registry.get(self.client)
                if entry is not None and entry.transport is self.transport:
                    del registry[self.client]
            super().connection_lost(exc)

    return TrackingProtocol


def _client_user(transport: asyncio.BaseTransport) -> str | None:
    """The CN of the verified client certificate (the handshake is over when this is called)."""
    ssl_object: Any = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    # With CERT_OPTIONAL a certificate the CA did not sign fails the handshake: one here is valid.
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        return None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None
