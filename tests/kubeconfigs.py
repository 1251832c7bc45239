"""Kubeconfigs for tests, with a real CA certificate and recognisable secrets."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOKEN = "fleetql-test-token-s3cr3t-0123456789"


def self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetql-test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


class KubeconfigFactory:
    def __init__(self) -> None:
        self.ca_data = base64.b64encode(self_signed_pem()).decode()

    def document(
        self,
        *,
        server: str = "https://127.0.0.1:6443",
        user: dict[str, Any] | None = None,
        cluster: dict[str, Any] | None = None,
        context: str = "admin@prod",
    ) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "prod",
                    "cluster": cluster
                    if cluster is not None
                    else {"server": server, "certificate-authority-data": self.ca_data},
                }
            ],
            "users": [{"name": "admin", "user": user if user is not None else {"token": TOKEN}}],
            "contexts": [{"name": context, "context": {"cluster": "prod", "user": "admin"}}],
            "current-context": context,
        }

    def yaml(self, **kwargs: Any) -> str:
        return yaml.safe_dump(self.document(**kwargs))

    def base64(self, **kwargs: Any) -> str:
        return base64.b64encode(self.yaml(**kwargs).encode()).decode()
