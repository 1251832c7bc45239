"""API token secrets: recognisable, random, and stored only as a hash.

The ``fqt_`` prefix tells a token from a JWT without parsing it and lets secret scanners find
leaked ones. 32 random bytes leave nothing to brute-force, so SHA-256 (fast, indexable) is the
right hash: a slow password hash would only slow every request down.
"""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["PREFIX", "hash_secret", "is_api_token", "new_secret"]

PREFIX = "fqt_"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def is_api_token(credential: str) -> bool:
    return credential.startswith(PREFIX)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
