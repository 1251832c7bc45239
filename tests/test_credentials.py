"""Tests for fleetql.credentials: what a credential says about itself, and no secret in it."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetql.credentials import (
    MAX_SUBJECT_LENGTH,
    CredentialInfo,
    CredentialKind,
    expiring,
    inspect_credential,
)
from fleetql.kubeconfig import ResolvedKubeconfig

UTC = datetime.UTC
NOT_AFTER = datetime.datetime(2031, 5, 17, 8, 30, 15, tzinfo=UTC)
NOW = datetime.datetime(2030, 1, 1, tzinfo=UTC)
SIGNATURE = "c2lnbmF0dXJlLTVlY3JldC1kM2FkYmVlZg"
PASSWORD = "pa55-5ecret-77d1e0"


def _resolved(auth_method: str, user: dict[str, Any]) -> ResolvedKubeconfig:
    """A resolved kubeconfig built directly, so tests control the stored user exactly."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "prod", "cluster": {"server": "https://k8s.example.com:6443"}}],
        "users": [{"name": "admin", "user": user}],
        "contexts": [{"name": "admin@prod", "context": {"cluster": "prod", "user": "admin"}}],
        "current-context": "admin@prod",
    }
    return ResolvedKubeconfig(
        server="https://k8s.example.com:6443",
        context="admin@prod",
        auth_method=auth_method,
        insecure_skip_tls_verify=False,
        document=document,
    )


def _certificate(
    subject: x509.Name,
    *,
    not_after: datetime.datetime,
    issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - datetime.timedelta(days=365))
        .not_valid_after(not_after)
        .sign(issuer_key or key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str | None, *organizations: str) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COUNTRY_NAME, "NL")]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name(attributes)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _segment(value: Any) -> str:
    raw = json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _jwt(payload: Any, header: Any = None) -> str:
    header = {"alg": "RS256", "kid": "k1"} if header is None else header
    return f"{_segment(header)}.{_segment(payload)}.{SIGNATURE}"


CLIENT_PEM, CLIENT_KEY = _certificate(_name("alice", "dev", "system:masters"), not_after=NOT_AFTER)


def test_client_certificate_gives_expiry_and_kubernetes_identity() -> None:
    resolved = _resolved(
        "client-certificate",
        {
            "client-certificate-data": _b64(CLIENT_PEM),
            "client-key-data": _b64(_key_pem(CLIENT_KEY)),
        },
    )

    info = inspect_credential(resolved)

    assert info == CredentialInfo(
        kind=CredentialKind.CLIENT_CERTIFICATE,
        expires_at=NOT_AFTER,
        subject="CN=alice,O=dev,O=system:masters",
    )
    assert info.expires_at is not None and info.expires_at.utcoffset() == datetime.timedelta(0)


def test_certificate_chain_is_read_from_its_first_certificate() -> None:
    ca_name = _name("fleet-ca")
    ca_pem, ca_key = _certificate(ca_name, not_after=datetime.datetime(2040, 1, 1, tzinfo=UTC))
    leaf_pem, leaf_key = _certificate(
        _name("kubernetes-admin", "system:masters"),
        not_after=NOT_AFTER,
        issuer=ca_name,
        issuer_key=ca_key,
    )
    resolved = _resolved(
        "client-certificate",
        {
            "client-certificate-data": _b64(leaf_pem + ca_pem),
            "client-key-data": _b64(_key_pem(leaf_key)),
        },
    )

    info = inspect_credential(resolved)

    assert info.expires_at == NOT_AFTER
    assert info.subject == "CN=kubernetes-admin,O=system:masters"


def test_certificate_subject_escapes_rfc4514_specials() -> None:
    pem, key = _certificate(_name("bob, the admin", "ops+sre"), not_after=NOT_AFTER)
    resolved = _resolved(
        "client-certificate",
        {"client-certificate-data": _b64(pem), "client-key-data": _b64(_key_pem(key))},
    )

    assert inspect_credential(resolved).subject == r"CN=bob\, the admin,O=ops\+sre"


def test_certificate_without_cn_or_o_has_no_subject() -> None:
    pem, key = _certificate(_name(None), not_after=NOT_AFTER)
    resolved = _resolved(
        "client-certificate",
        {"client-certificate-data": _b64(pem), "client-key-data": _b64(_key_pem(key))},
    )

    info = inspect_credential(resolved)

    assert info.subject is None
    assert info.expires_at == NOT_AFTER


@pytest.mark.parametrize(
    "data",
    [
        _b64(b"not a certificate at all"),
        _b64(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        "!!! not base64 !!!",
        "",
        None,
    ],
)
def test_unreadable_certificate_gives_no_expiry_and_no_subject(data: str | None) -> None:
    resolved = _resolved(
        "client-certificate",
        {"client-certificate-data": data, "client-key-data": _b64(_key_pem(CLIENT_KEY))},
    )

    assert inspect_credential(resolved) == CredentialInfo(
        CredentialKind.CLIENT_CERTIFICATE, None, None
    )


def test_jwt_token_gives_exp_and_sub_without_verifying() -> None:
    exp = int(NOT_AFTER.timestamp())
    token = _jwt({"sub": "system:serviceaccount:kube-system:fleet", "exp": exp, "iat": exp - 3600})

    info = inspect_credential(_resolved("token", {"token": token}))

    assert info == CredentialInfo(
        kind=CredentialKind.TOKEN,
        expires_at=NOT_AFTER,
        subject="system:serviceaccount:kube-system:fleet",
    )


def test_jwt_exp_may_be_fractional() -> None:
    token = _jwt({"sub": "fleet", "exp": NOT_AFTER.timestamp() + 0.5})

    info = inspect_credential(_resolved("token", {"token": token}))

    assert info.expires_at == NOT_AFTER + datetime.timedelta(milliseconds=500)


def test_jwt_without_exp_never_expires() -> None:
    token = _jwt({"sub": "system:serviceaccount:default:legacy"})

    info = inspect_credential(_resolved("token", {"token": token}))

    assert info.expires_at is None
    assert info.subject == "system:serviceaccount:default:legacy"


@pytest.mark.parametrize(
    "exp", ["1999999999", True, None, [1], -5, 0, 10**20, 1e300, float("nan"), float("inf")]
)
def test_jwt_with_nonsense_exp_has_no_expiry(exp: Any) -> None:
    payload = json.dumps({"sub": "fleet", "exp": exp}, allow_nan=True).encode()
    segment = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    token = f"{_segment({'alg': 'RS256'})}.{segment}.{SIGNATURE}"

    info = inspect_credential(_resolved("token", {"token": token}))

    assert info.expires_at is None
    assert info.subject == "fleet"


def test_jwt_subject_is_capped() -> None:
    token = _jwt({"sub": "x" * 1000})

    subject = inspect_credential(_resolved("token", {"token": token})).subject

    assert subject == "x" * MAX_SUBJECT_LENGTH


def test_jwt_with_non_string_subject_has_no_subject() -> None:
    token = _jwt({"sub": {"name": "fleet"}, "exp": int(NOT_AFTER.timestamp())})

    info = inspect_credential(_resolved("token", {"token": token}))

    assert info.subject is None
    assert info.expires_at == NOT_AFTER


@pytest.mark.parametrize(
    "token",
    [
        "fleetql-opaque-5ecret-token-0123456789",
        "abcdef.0123456789abcdef",  # a bootstrap token
        "a.b.c",  # base64url segments that do not decode
        "abcd.efgh.ijkl",  # segments that decode, but not to JSON
        f"{_segment({'typ': 'JWT'})}.{_segment({'sub': 'x'})}.{SIGNATURE}",  # header without alg
        f"{_segment({'alg': 'RS256'})}.{_segment(['sub', 'x'])}.{SIGNATURE}",  # payload not a map
        f"{_segment(['alg'])}.{_segment({'sub': 'x'})}.{SIGNATURE}",  # header not a map
        f"{_segment({'alg': 'RS256'})}.{_segment({'sub': 'x'})}",  # two segments
        f"{_segment({'alg': 'RS256'})}.{_segment({'sub': 'x'})}.{SIGNATURE}.extra",
    ],
)
def test_tokens_that_are_not_jwts_say_nothing(token: str) -> None:
    assert inspect_credential(_resolved("token", {"token": token})) == CredentialInfo(
        CredentialKind.TOKEN, None, None
    )


def test_basic_auth_names_the_user() -> None:
    info = inspect_credential(_resolved("basic", {"username": "admin", "password": PASSWORD}))

    assert info == CredentialInfo(CredentialKind.BASIC, expires_at=None, subject="admin")


def test_unknown_auth_method_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown auth method"):
        inspect_credential(_resolved("exec", {}))


@pytest.mark.parametrize(
    ("auth_method", "user", "secrets"),
    [
        (
            "token",
            {"token": _jwt({"sub": "fleet", "exp": int(NOT_AFTER.timestamp())})},
            [_jwt({"sub": "fleet", "exp": int(NOT_AFTER.timestamp())}), SIGNATURE],
        ),
        ("token", {"token": "opaque-5ecret-token"}, ["opaque-5ecret-token"]),
        (
            "client-certificate",
            {
                "client-certificate-data": _b64(CLIENT_PEM),
                "client-key-data": _b64(_key_pem(CLIENT_KEY)),
            },
            [
                _b64(_key_pem(CLIENT_KEY)),
                _key_pem(CLIENT_KEY).decode(),
                x509.load_pem_x509_certificate(CLIENT_PEM).signature.hex(),
            ],
        ),
        ("basic", {"username": "admin", "password": PASSWORD}, [PASSWORD]),
    ],
)
def test_no_secret_reaches_the_result(
    auth_method: str, user: dict[str, Any], secrets: list[str]
) -> None:
    info = inspect_credential(_resolved(auth_method, user))

    shown = [repr(info), str(info.subject), str(info.expires_at)]
    for secret in secrets:
        for text in shown:
            assert secret not in text
        # Any 12-character stretch of a secret would already be a leak.
        for start in range(0, max(1, len(secret) - 12), 7):
            assert all(secret[start : start + 12] not in text for text in shown)


def test_expiring_at_the_boundaries() -> None:
    info = CredentialInfo(CredentialKind.CLIENT_CERTIFICATE, NOT_AFTER, "CN=alice")
    week = datetime.timedelta(days=7)
    second = datetime.timedelta(seconds=1)

    assert not expiring(info, now=NOT_AFTER - week - second, warn_before=week)
    assert expiring(info, now=NOT_AFTER - week, warn_before=week)
    assert expiring(info, now=NOT_AFTER, warn_before=week)
    assert expiring(info, now=NOT_AFTER + week, warn_before=week)
    assert expiring(info, now=NOT_AFTER, warn_before=datetime.timedelta(0))
    assert not expiring(info, now=NOT_AFTER - second, warn_before=datetime.timedelta(0))


def test_credential_without_expiry_is_never_expiring() -> None:
    info = CredentialInfo(CredentialKind.TOKEN, None, None)

    assert not expiring(info, now=NOW, warn_before=datetime.timedelta(days=36500))
