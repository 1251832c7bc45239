"""AES-256-GCM encryption of stored kubeconfigs.

Kubeconfigs hold cluster credentials, so they are stored encrypted under a key that lives outside
the database. Each ciphertext is bound to its cluster's id (as associated data), so a ciphertext
copied to another row does not decrypt, and it names the key that made it, so keys can be rotated.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1

_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_ID_CONTEXT = b"fleetql-key-id\0"
_ASSOCIATED_DATA_PREFIX = b"fleetql/kubeconfig/v1/"
_WHITESPACE = re.compile(r"\s+")
_GENERATE_HINT = "generate one with `fleetql generate-key` (or `openssl rand -base64 32`)"


class InvalidKeyError(ValueError):
    """The configured encryption key cannot be used; the message never contains the key."""


class DecryptionError(Exception):
    """A stored kubeconfig cannot be decrypted: tampered with, wrong key, or another row's."""


@dataclass(frozen=True)
class EncryptionKey:
    """A 256-bit AES key; its material is kept out of repr so it cannot reach a log."""

    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != _KEY_BYTES:
            raise InvalidKeyError(
                f"encryption key must be {_KEY_BYTES} bytes; got {len(self.material)} bytes"
            )

    def __repr__(self) -> str:
        return f"EncryptionKey(key_id={self.key_id!r})"

    @classmethod
    def from_base64(cls, text: str) -> EncryptionKey:
        """Read a key as settings and secret stores hold it; surrounding whitespace is ignored."""
        try:
            compact = _WHITESPACE.sub("", text)
            if len(compact) % 4 or len(compact) - len(compact.rstrip("=")) > 2:
                raise binascii.Error("surplus or missing padding")  # strict_mode allows surplus
            material = binascii.a2b_base64(compact, strict_mode=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            raise InvalidKeyError(f"encryption key is not valid base64; {_GENERATE_HINT}") from None
        if len(material) != _KEY_BYTES:
            raise InvalidKeyError(
                f"encryption key must be {_KEY_BYTES} bytes base64-encoded; "
                f"got {len(material)} bytes; {_GENERATE_HINT}"
            )
        return cls(material)

    @classmethod
    def generate(cls) -> EncryptionKey:
        """A fresh random key, for `fleetql` to print when an operator needs one."""
        return cls(os.urandom(_KEY_BYTES))

    def to_base64(self) -> str:
        """The key in the form :meth:`from_base64` reads."""
        return binascii.b2a_base64(self.material, newline=False).decode("ascii")

    @property
    def key_id(self) -> str:
        """A stable, non-secret fingerprint stored beside each ciphertext to find its key.

        Safe to store: SHA-256 cannot be inverted, and the key is 256 uniformly random bits, so
        64 bits of its hash give no way to guess it. The domain prefix keeps this hash distinct
        from any other hash of the key that might be published elsewhere.
        """
        return hashlib.sha256(_KEY_ID_CONTEXT + self.material).hexdigest()[:16]


@dataclass(frozen=True)
class EncryptedBlob:
    """What is stored for one kubeconfig: format, the encrypting key's id, nonce + ciphertext."""

    format_version: int
    key_id: str
    payload: bytes  # 12-byte nonce, then ciphertext with its 16-byte GCM tag


class KubeconfigCipher:
    """Encrypts with the current key; decrypts with it or any previous key, for key rotation."""

    def __init__(self, key: EncryptionKey, *, previous: Sequence[EncryptionKey] = ()) -> None:
        self._key_id = key.key_id
        self._encryptor = AESGCM(key.material)
        self._decryptors = {old.key_id: AESGCM(old.material) for old in previous}
        self._decryptors[key.key_id] = self._encryptor

    @property
    def key_id(self) -> str:
        """The id of the key new ciphertexts are made with; older blobs may need re-encrypting."""
        return self._key_id

    def encrypt(self, plaintext: bytes, *, cluster_id: uuid.UUID) -> EncryptedBlob:
        """Encrypt for one cluster's row.

        The nonce is random per call: 96 random bits stay collision-safe for far more than the
        2**32 encryptions NIST allows per key, which no fleet will approach.
        """
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = self._encryptor.encrypt(nonce, plaintext, _associated_data(cluster_id))
        return EncryptedBlob(FORMAT_VERSION, self._key_id, nonce + ciphertext)

    def decrypt(self, blob: EncryptedBlob, *, cluster_id: uuid.UUID) -> bytes:
        """Decrypt a blob stored in the row of ``cluster_id``; any mismatch is a DecryptionError."""
        if blob.format_version != FORMAT_VERSION:
            raise DecryptionError(
                f"kubeconfig is stored in format version {blob.format_version}, "
                f"which this version of fleetql does not read (it reads {FORMAT_VERSION})"
            )
        aead = self._decryptors.get(blob.key_id)
        if aead is None:
            raise DecryptionError(
                f"kubeconfig was encrypted with key {blob.key_id}, which is not configured"
            )
        if len(blob.payload) < _NONCE_BYTES + _TAG_BYTES:
            raise DecryptionError("kubeconfig ciphertext is truncated")
        nonce, ciphertext = blob.payload[:_NONCE_BYTES], blob.payload[_NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, ciphertext, _associated_data(cluster_id))
        except InvalidTag:
            raise DecryptionError(
                f"kubeconfig of cluster {cluster_id} does not decrypt with key {blob.key_id}: "
                "it was tampered with or belongs to another cluster"
            ) from None

    def can_decrypt_with(self, key_id: str) -> bool:
        """Whether a blob made with ``key_id`` can be decrypted by this cipher."""
        return key_id in self._decryptors


def _associated_data(cluster_id: uuid.UUID) -> bytes:
    return _ASSOCIATED_DATA_PREFIX + cluster_id.bytes
