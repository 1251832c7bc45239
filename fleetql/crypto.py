"""Envelope encryption of stored kubeconfigs (AES-256-GCM), as Kubernetes KMS v2 and Vault do it.

Kubeconfigs hold cluster credentials, so they are stored encrypted under keys that live outside
the database. Each kubeconfig gets its own random data key; the data key is wrapped by a
key-encryption key from the configured key ring, and the stored format carries its version, the
wrapping key's id and the wrapped data key. Rotating a key then re-wraps 32 bytes per cluster and
leaves the kubeconfig's ciphertext as it is. Everything is bound to the cluster's id, so a
ciphertext copied to another row does not decrypt.

Format 1 (issue 2's direct encryption under the configured key) is still read, so nothing breaks
before ``fleetql rotate-key`` converts it.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LEGACY_FORMAT_VERSION = 1
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (LEGACY_FORMAT_VERSION, FORMAT_VERSION)

_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_WRAPPED_KEY_BYTES = _NONCE_BYTES + _KEY_BYTES + _TAG_BYTES
_KEY_ID_CONTEXT = b"fleetql-key-id\0"
_ASSOCIATED_DATA_PREFIX = b"fleetql/kubeconfig/v1/"
_DATA_KEY_AAD_PREFIX = b"fleetql/data-key/v2\0"
_BODY_AAD_PREFIX = b"fleetql/kubeconfig/v2\0"
_WHITESPACE = re.compile(r"\s+")
_GENERATE_HINT = "generate one with `fleetql generate-key` (or `openssl rand -base64 32`)"
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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
class KeyRing:
    """The key-encryption keys by id; ``primary`` wraps new data keys, the others only unwrap.

    A key's id is its fingerprint unless the operator named it. Only ids reach repr and logs.
    """

    keys: Mapping[str, EncryptionKey] = field(repr=False)
    primary: str

    def __post_init__(self) -> None:
        for key_id in self.keys:
            if not KEY_ID_PATTERN.match(key_id):
                raise InvalidKeyError(
                    f"key id {key_id!r} must be 1-63 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit"
                )
        if self.primary not in self.keys:
            raise InvalidKeyError(
                f"the primary key {self.primary!r} is not in the key ring "
                f"(its ids: {', '.join(sorted(self.keys)) or 'none'})"
            )

    def __repr__(self) -> str:
        return f"KeyRing(ids={sorted(self.keys)!r}, primary={self.primary!r})"

    @classmethod
    def of(cls, key: EncryptionKey, *, previous: Iterable[EncryptionKey] = ()) -> KeyRing:
        """A ring of keys named by their fingerprints, ``key`` the primary."""
        keys = {old.key_id: old for old in previous}
        keys[key.key_id] = key
        return cls(keys, key.key_id)


@dataclass(frozen=True)
class EncryptedBlob:
    """What is stored for one kubeconfig: format, the (wrapping) key's id, and the payload.

    Format 1: 12-byte nonce, then the kubeconfig's ciphertext with its 16-byte GCM tag.
    Format 2: the header (version byte, key id length and key id, the wrapped data key: nonce,
    32-byte ciphertext and tag), then the body (nonce, kubeconfig ciphertext and tag).
    """

    format_version: int
    key_id: str
    payload: bytes

    def content_fingerprint(self) -> str:
        """A hash of what decrypts to the kubeconfig, unchanged by a rewrap (format 2).

        A client pool keyed on it keeps its clients through a key rotation; keyed on the whole
        payload, each rotation rebuilds every cluster's client once (harmless, but avoidable).
        """
        body = self.payload
        if self.format_version == FORMAT_VERSION and len(body) > 2:
            body = body[2 + body[1] + _WRAPPED_KEY_BYTES :]
        return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class _Envelope:
    header: bytes  # version, key id length, key id
    wrapped_key: bytes  # nonce + data key ciphertext + tag
    body: bytes  # nonce + kubeconfig ciphertext + tag


class KubeconfigCipher:
    """Encrypts under a fresh data key wrapped by the primary key; decrypts with any key of the
    ring, in either format; rewraps records onto the primary key for rotation."""

    def __init__(
        self, key: EncryptionKey | KeyRing, *, previous: Sequence[EncryptionKey] = ()
    ) -> None:
        ring = key if isinstance(key, KeyRing) else KeyRing.of(key, previous=previous)
        self._key_id = ring.primary
        self._names = frozenset(ring.keys)
        # A key answers to its fingerprint as well as to its name in the ring: records written
        # while it was a lone key (format 1, or 2) carry the fingerprint.
        self._keks = {member.key_id: AESGCM(member.material) for member in ring.keys.values()}
        self._keks.update({name: AESGCM(member.material) for name, member in ring.keys.items()})
        self._fingerprints = frozenset(member.key_id for member in ring.keys.values())

    def __repr__(self) -> str:
        return f"KubeconfigCipher(key_ids={sorted(self._names)!r}, primary={self._key_id!r})"

    @property
    def key_id(self) -> str:
        """The id of the primary key, which wraps new data keys; others are only for reading."""
        return self._key_id

    @property
    def key_ids(self) -> frozenset[str]:
        """Every key id of the ring."""
        return self._names

    def encrypt(self, plaintext: bytes, *, cluster_id: uuid.UUID) -> EncryptedBlob:
        """Encrypt for one cluster's row under a fresh data key.

        Nonces are random per call: 96 random bits stay collision-safe for far more than the
        2**32 encryptions NIST allows per key, which no fleet will approach (and each data key
        encrypts exactly one kubeconfig).
        """
        data_key = os.urandom(_KEY_BYTES)
        header = _header(self._key_id)
        nonce = os.urandom(_NONCE_BYTES)
        body = nonce + AESGCM(data_key).encrypt(nonce, plaintext, _body_aad(cluster_id))
        wrapped = self._wrap(data_key, header=header, cluster_id=cluster_id)
        return EncryptedBlob(FORMAT_VERSION, self._key_id, header + wrapped + body)

    def decrypt(self, blob: EncryptedBlob, *, cluster_id: uuid.UUID) -> bytes:
        """Decrypt a blob stored in the row of ``cluster_id``; any mismatch is a DecryptionError."""
        if blob.format_version == LEGACY_FORMAT_VERSION:
            return self._decrypt_legacy(blob, cluster_id=cluster_id)
        envelope = self._open(blob)
        data_key = self._unwrap(blob, envelope, cluster_id=cluster_id)
        return _decrypt_body(data_key, envelope.body, cluster_id=cluster_id, key_id=blob.key_id)

    def check(self, blob: EncryptedBlob, *, cluster_id: uuid.UUID) -> None:
        """Prove that this ring's key under ``blob.key_id`` is the one that made ``blob`` (a
        format 2 blob only unwraps its data key); raise DecryptionError otherwise."""
        if blob.format_version == LEGACY_FORMAT_VERSION:
            self._decrypt_legacy(blob, cluster_id=cluster_id)
        else:
            self._unwrap(blob, self._open(blob), cluster_id=cluster_id)

    def needs_rewrap(self, blob: EncryptedBlob) -> bool:
        """Whether ``blob`` is in an older format or wrapped by a key that is not the primary."""
        return blob.format_version != FORMAT_VERSION or blob.key_id != self._key_id

    def rewrap(self, blob: EncryptedBlob, *, cluster_id: uuid.UUID) -> EncryptedBlob:
        """The same kubeconfig wrapped by the primary key in the current format.

        A format 2 blob keeps its data key and body: only the 32-byte data key is unwrapped and
        wrapped again. A format 1 blob is decrypted and encrypted afresh under a new data key.
        """
        if not self.needs_rewrap(blob):
            return blob
        if blob.format_version == LEGACY_FORMAT_VERSION:
            plaintext = self._decrypt_legacy(blob, cluster_id=cluster_id)
            return self.encrypt(plaintext, cluster_id=cluster_id)
        envelope = self._open(blob)
        data_key = self._unwrap(blob, envelope, cluster_id=cluster_id)
        header = _header(self._key_id)
        wrapped = self._wrap(data_key, header=header, cluster_id=cluster_id)
        return EncryptedBlob(FORMAT_VERSION, self._key_id, header + wrapped + envelope.body)

    def proves(self, key_id: str) -> bool:
        """Whether ``key_id`` is the fingerprint of the key it finds, so that no record under
        it can need another key; a name chosen in the settings proves nothing of the kind."""
        return key_id in self._fingerprints

    def can_decrypt_with(self, key_id: str) -> bool:
        """Whether a blob made with ``key_id`` can be decrypted by this cipher."""
        return key_id in self._keks

    def _wrap(self, data_key: bytes, *, header: bytes, cluster_id: uuid.UUID) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        kek = self._keks[self._key_id]
        return nonce + kek.encrypt(nonce, data_key, _data_key_aad(header, cluster_id))

    def _open(self, blob: EncryptedBlob) -> _Envelope:
        if blob.format_version != FORMAT_VERSION:
            readable = " and ".join(str(v) for v in READABLE_FORMAT_VERSIONS)
            raise DecryptionError(
                f"kubeconfig is stored in format version {blob.format_version}, "
                f"which this version of fleetql does not read (it reads {readable})"
            )
        payload = blob.payload
        if len(payload) < 2 or payload[0] != FORMAT_VERSION:
            raise DecryptionError("kubeconfig header is damaged: its version does not match")
        end = 2 + payload[1]
        if len(payload) < end + _WRAPPED_KEY_BYTES + _NONCE_BYTES + _TAG_BYTES:
            raise DecryptionError("kubeconfig ciphertext is truncated")
        if payload[2:end] != blob.key_id.encode("ascii", "replace"):
            raise DecryptionError(
                "kubeconfig header is damaged: it names another key than its row does"
            )
        body_start = end + _WRAPPED_KEY_BYTES
        return _Envelope(payload[:end], payload[end:body_start], payload[body_start:])

    def _unwrap(self, blob: EncryptedBlob, envelope: _Envelope, *, cluster_id: uuid.UUID) -> bytes:
        kek = self._keks.get(blob.key_id)
        if kek is None:
            raise DecryptionError(
                f"kubeconfig was encrypted with key {blob.key_id}, which is not configured"
            )
        nonce, wrapped = envelope.wrapped_key[:_NONCE_BYTES], envelope.wrapped_key[_NONCE_BYTES:]
        try:
            return kek.decrypt(nonce, wrapped, _data_key_aad(envelope.header, cluster_id))
        except InvalidTag:
            raise DecryptionError(
                f"the data key of cluster {cluster_id} does not unwrap with key {blob.key_id}: "
                "a different key under that id, or it was tampered with or belongs to another "
                "cluster"
            ) from None

    def _decrypt_legacy(self, blob: EncryptedBlob, *, cluster_id: uuid.UUID) -> bytes:
        aead = self._keks.get(blob.key_id)
        if aead is None:
            raise DecryptionError(
                f"kubeconfig was encrypted with key {blob.key_id}, which is not configured"
            )
        if len(blob.payload) < _NONCE_BYTES + _TAG_BYTES:
            raise DecryptionError("kubeconfig ciphertext is truncated")
        nonce, ciphertext = blob.payload[:_NONCE_BYTES], blob.payload[_NONCE_BYTES:]
        try:
            return aead.decrypt(nonce, ciphertext, _legacy_associated_data(cluster_id))
        except InvalidTag:
            raise DecryptionError(
                f"kubeconfig of cluster {cluster_id} does not decrypt with key {blob.key_id}: "
                "it was tampered with or belongs to another cluster"
            ) from None


def _header(key_id: str) -> bytes:
    encoded = key_id.encode("ascii")
    return bytes((FORMAT_VERSION, len(encoded))) + encoded


def _data_key_aad(header: bytes, cluster_id: uuid.UUID) -> bytes:
    # The wrap authenticates the whole header (version and key id) and the cluster.
    return _DATA_KEY_AAD_PREFIX + header + cluster_id.bytes


def _body_aad(cluster_id: uuid.UUID) -> bytes:
    # The parts of the header a rewrap keeps (the version) and the cluster. The key id and the
    # wrapped data key are authenticated by the wrap, and only the right data key opens the body,
    # so a rewrap need not touch the kubeconfig's ciphertext.
    return _BODY_AAD_PREFIX + bytes((FORMAT_VERSION,)) + cluster_id.bytes


def _decrypt_body(data_key: bytes, body: bytes, *, cluster_id: uuid.UUID, key_id: str) -> bytes:
    nonce, ciphertext = body[:_NONCE_BYTES], body[_NONCE_BYTES:]
    try:
        return AESGCM(data_key).decrypt(nonce, ciphertext, _body_aad(cluster_id))
    except InvalidTag:
        raise DecryptionError(
            f"kubeconfig of cluster {cluster_id} does not decrypt under its data key "
            f"(wrapped by key {key_id}): it was tampered with or belongs to another cluster"
        ) from None


def _legacy_associated_data(cluster_id: uuid.UUID) -> bytes:
    return _ASSOCIATED_DATA_PREFIX + cluster_id.bytes
