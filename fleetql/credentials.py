"""What a cluster's credential is and when it stops working, read from its imported kubeconfig.

Operators need to know that a client certificate expires next week before the poller starts
failing, without fleetql storing anything beyond the encrypted kubeconfig. This module derives a
small, non-secret summary (kind, expiry, the identity the API server sees) on demand. Everything
here is informational: nothing is verified, and an unreadable credential yields ``None`` fields
rather than an error, because :func:`fleetql.kubeconfig.parse_kubeconfig` already refused what
must be refused.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleetql.kubeconfig import ResolvedKubeconfig

MAX_SUBJECT_LENGTH = 256

# A service-account JWT is about 1 KiB; far larger input is not a token worth decoding.
_MAX_JWT_LENGTH = 16 * 1024
# Header and payload are unpadded base64url; the signature may be empty (an unsecured JWT).
_JWT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)", re.ASCII)
# 9999-12-31T23:59:59Z: the last instant a datetime can hold; an `exp` beyond it (or before the
# epoch) is not a date anyone meant.
_MAX_EXP = 253_402_300_799


class CredentialKind(enum.StrEnum):
    """How fleetql authenticates to a cluster: the embedded kinds that kubeconfig import accepts."""

    TOKEN = "TOKEN"
    CLIENT_CERTIFICATE = "CLIENT_CERTIFICATE"
    BASIC = "BASIC"


_KINDS = {
    "token": CredentialKind.TOKEN,
    "client-certificate": CredentialKind.CLIENT_CERTIFICATE,
    "basic": CredentialKind.BASIC,
}


@dataclass(frozen=True)
class CredentialInfo:
    """A non-secret summary of a credential: safe to log, show and return over the API.

    ``expires_at`` is timezone-aware UTC, or None when the credential has no known expiry.
    ``subject`` is the user the API server authenticates, or None when it cannot be read locally.
    """

    kind: CredentialKind
    expires_at: datetime | None
    subject: str | None


def inspect_credential(resolved: ResolvedKubeconfig) -> CredentialInfo:
    """Summarise the credential of a resolved kubeconfig without verifying it and without raising
    for unreadable certificate or token contents."""
    try:
        kind = _KINDS[resolved.auth_method]
    except KeyError:
        raise ValueError(
            f"unknown auth method {resolved.auth_method!r}; "
            "expected one of: " + ", ".join(sorted(_KINDS))
        ) from None
    user = _user(resolved.document)
    if kind is CredentialKind.CLIENT_CERTIFICATE:
        return _inspect_certificate(user.get("client-certificate-data"))
    if kind is CredentialKind.TOKEN:
        return _inspect_token(user.get("token"))
    username = user.get("username")
    return CredentialInfo(
        kind=CredentialKind.BASIC,
        expires_at=None,
        subject=_cap(username) if isinstance(username, str) and username else None,
    )


def expiring(info: CredentialInfo, *, now: datetime, warn_before: timedelta) -> bool:
    """Whether the credential expires within ``warn_before`` of ``now``, or already has.

    A credential without a known expiry is never expiring.
    """
    return info.expires_at is not None and info.expires_at - now <= warn_before


def _user(document: dict[str, Any]) -> dict[str, Any]:
    users = document.get("users")
    if isinstance(users, list) and users and isinstance(users[0], dict):
        user = users[0].get("user")
        if isinstance(user, dict):
            return user
    return {}


def _inspect_certificate(data: object) -> CredentialInfo:
    unreadable = CredentialInfo(CredentialKind.CLIENT_CERTIFICATE, None, None)
    if not isinstance(data, str):
        return unreadable
    try:
        pem = base64.b64decode(data)
        # kubectl presents the first certificate of a chain as the client's; the rest are
        # intermediates.
        leaf = x509.load_pem_x509_certificates(pem)[0]
    except (ValueError, IndexError):  # binascii.Error is a ValueError
        return unreadable
    return CredentialInfo(
        kind=CredentialKind.CLIENT_CERTIFICATE,
        expires_at=leaf.not_valid_after_utc,
        subject=_certificate_subject(leaf.subject),
    )


def _certificate_subject(name: x509.Name) -> str | None:
    """The user as kube-apiserver names it: the CN is the username, each O a group.

    Other attributes (OU, C, ...) play no part in Kubernetes authentication and are left out.
    """
    try:
        attributes = [
            *name.get_attributes_for_oid(NameOID.COMMON_NAME),
            *name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME),
        ]
        text = ",".join(attribute.rfc4514_string() for attribute in attributes)
    except ValueError:
        return None
    return _cap(text) if text else None


def _inspect_token(token: object) -> CredentialInfo:
    claims = _jwt_claims(token) if isinstance(token, str) else None
    if claims is None:
        # Opaque and bootstrap tokens say nothing about themselves; only the server knows.
        return CredentialInfo(CredentialKind.TOKEN, None, None)
    subject = claims.get("sub")
    return CredentialInfo(
        kind=CredentialKind.TOKEN,
        expires_at=_expiry(claims.get("exp")),
        subject=_cap(subject) if isinstance(subject, str) and subject else None,
    )


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, read without verifying its signature, or None if it is not a JWT.

    Unverified claims are fine here: they only describe a token the user handed us, and the API
    server remains the judge of whether it is accepted.
    """
    token = token.strip()
    if len(token) > _MAX_JWT_LENGTH:
        return None
    match = _JWT.fullmatch(token)
    if match is None:
        return None
    header = _json_segment(match.group(1))
    if header is None or not isinstance(header.get("alg"), str):
        return None
    return _json_segment(match.group(2))


def _json_segment(segment: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # binascii.Error, UnicodeDecodeError, JSONDecodeError
        return None
    return value if isinstance(value, dict) else None


def _expiry(exp: object) -> datetime | None:
    # bool is an int subclass, and `"exp": true` is not a time.
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    if isinstance(exp, float) and not math.isfinite(exp):
        return None
    if not 0 < exp <= _MAX_EXP:
        return None
    return datetime.fromtimestamp(exp, UTC)


def _cap(text: str) -> str:
    return text[:MAX_SUBJECT_LENGTH]
