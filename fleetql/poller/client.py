"""Building a kubernetes_asyncio ApiClient from a stored kubeconfig, keeping keys off the disk.

kubernetes_asyncio's own loader writes certificate and key data to temporary files that stay for
the life of the process. Python's ``ssl`` can take a CA from memory but only loads a client key
from a file, so that one file (and its certificate) is written 0600 into a private 0700 folder and
removed as soon as the TLS context exists, which is when the ApiClient has been constructed.
"""

from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path
from typing import Any

from kubernetes_asyncio.client import ApiClient, Configuration


class ClientConfigError(ValueError):
    """The stored kubeconfig cannot make a client (it was validated at import, so rarely)."""


def build_api_client(document: dict[str, Any]) -> ApiClient:
    """An ApiClient for the one context of a minimal kubeconfig (as fleetql stores them)."""
    try:
        cluster = document["clusters"][0]["cluster"]
        user = document["users"][0]["user"]
    except (KeyError, IndexError, TypeError):
        raise ClientConfigError("stored kubeconfig has no cluster or user") from None

    configuration = Configuration()
    configuration.host = str(cluster["server"]).rstrip("/")
    configuration.verify_ssl = not cluster.get("insecure-skip-tls-verify", False)
    if "token" in user:
        configuration.api_key["BearerToken"] = f"Bearer {user['token']}"
    elif "username" in user:
        pair = f"{user['username']}:{user['password']}".encode()
        configuration.api_key["BearerToken"] = "Basic " + base64.b64encode(pair).decode()

    with tempfile.TemporaryDirectory(prefix="fleetql-tls-") as private:
        os.chmod(private, 0o700)
        folder = Path(private)
        if ca := cluster.get("certificate-authority-data"):
            configuration.ssl_ca_cert = _write_private(folder / "ca.crt", ca)
        if cert := user.get("client-certificate-data"):
            configuration.cert_file = _write_private(folder / "client.crt", cert)
            configuration.key_file = _write_private(folder / "client.key", user["client-key-data"])
        # The TLS context is built here, reading the files; after this block they are gone.
        return ApiClient(configuration)


def _write_private(path: Path, data_base64: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(base64.b64decode(data_base64))
    return str(path)
