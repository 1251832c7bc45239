"""Envelope encryption: a data key per kubeconfig, wrapped by a key of the ring; format 1 still
read; key rings in the settings; the start-up check with a ring. Rotation: test_key_rotation.py."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import update

from fleetql.access import SYSTEM
from fleetql.app import open_services
from fleetql.config import ConfigError, EncryptionSettings, Settings, load_settings
from fleetql.crypto import (
    FORMAT_VERSION,
    DecryptionError,
    EncryptedBlob,
    EncryptionKey,
    InvalidKeyError,
    KeyRing,
    KubeconfigCipher,
)
from fleetql.db.keys import KeyMismatchError
from fleetql.db.models import ClusterCredential
from fleetql.keystore import load_key_ring
from fleetql.resolvers.context import Context
from fleetql.resolvers.imports import import_cluster
from tests.conftest import PostgresServer
from tests.kubeconfigs import KubeconfigFactory

PLAINTEXT = b"apiVersion: v1\nkind: Config\nusers:\n- name: dev\n  user: {token: s3cret}\n"
CLUSTER = uuid.UUID("0b7c8e5e-6a47-4f4e-9d7e-2f1f0e6c9a11")
OTHER_CLUSTER = uuid.UUID("4d2b7a8e-1c0f-4a55-8f3e-6b9d2c1e0a77")


def legacy_blob(key: EncryptionKey, plaintext: bytes, cluster_id: uuid.UUID) -> EncryptedBlob:
    """A kubeconfig as issue 2 stored it (format 1), written independently of fleetql.crypto:
    AES-256-GCM under the key itself, nonce first, the cluster id in the associated data."""
    nonce = os.urandom(12)
    associated = b"fleetql/kubeconfig/v1/" + cluster_id.bytes
    return EncryptedBlob(
        1, key.key_id, nonce + AESGCM(key.material).encrypt(nonce, plaintext, associated)
    )


def header_length(blob: EncryptedBlob) -> int:
    return 2 + len(blob.key_id)


# --- the format ------------------------------------------------------------------------------


def test_each_kubeconfig_gets_its_own_data_key_wrapped_by_the_primary() -> None:
    key = EncryptionKey.generate()
    cipher = KubeconfigCipher(key)

    first = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)
    second = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)

    assert first.format_version == FORMAT_VERSION == 2
    assert first.payload[0] == 2 and first.payload[1] == len(key.key_id)
    start = header_length(first)
    # Different wrapped data keys, not just different nonces: a fresh data key each time.
    assert first.payload[start : start + 60] != second.payload[start : start + 60]
    assert cipher.decrypt(first, cluster_id=CLUSTER) == PLAINTEXT
    assert cipher.decrypt(second, cluster_id=CLUSTER) == PLAINTEXT


def test_a_wrong_key_under_the_same_id_does_not_unwrap() -> None:
    blob = KubeconfigCipher(KeyRing({"k1": EncryptionKey.generate()}, "k1")).encrypt(
        PLAINTEXT, cluster_id=CLUSTER
    )
    impostor = KubeconfigCipher(KeyRing({"k1": EncryptionKey.generate()}, "k1"))

    with pytest.raises(DecryptionError, match="does not unwrap with key k1"):
        impostor.decrypt(blob, cluster_id=CLUSTER)


def test_envelope_is_bound_to_its_cluster() -> None:
    cipher = KubeconfigCipher(EncryptionKey.generate())
    blob = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)

    with pytest.raises(DecryptionError, match="another cluster"):
        cipher.decrypt(blob, cluster_id=OTHER_CLUSTER)


def test_every_part_of_the_header_is_authenticated() -> None:
    ring = KeyRing({"a": EncryptionKey.generate(), "b": EncryptionKey.generate()}, "a")
    cipher = KubeconfigCipher(ring)
    blob = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)
    start = header_length(blob)
    for position in [0, 1, 2, start, start + 12, start + 59, start + 60, len(blob.payload) - 1]:
        payload = bytearray(blob.payload)
        payload[position] ^= 0x01
        with pytest.raises(DecryptionError):
            cipher.decrypt(dataclasses.replace(blob, payload=bytes(payload)), cluster_id=CLUSTER)
    # The row's key id and the header's must agree: relabelling a record is refused.
    relabelled = dataclasses.replace(blob, key_id="b")
    with pytest.raises(DecryptionError, match="names another key"):
        cipher.decrypt(relabelled, cluster_id=CLUSTER)
    # A header that names key b (rewritten consistently) does not unwrap: the wrap binds the id.
    forged = bytes((2, 1)) + b"b" + blob.payload[start:]
    with pytest.raises(DecryptionError, match="does not unwrap"):
        cipher.decrypt(EncryptedBlob(2, "b", forged), cluster_id=CLUSTER)


def test_another_records_header_does_not_open_this_body() -> None:
    cipher = KubeconfigCipher(EncryptionKey.generate())
    old = cipher.encrypt(b"apiVersion: v1\nkind: Config\n", cluster_id=CLUSTER)
    new = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)
    start = header_length(new) + 60
    spliced = dataclasses.replace(new, payload=old.payload[:start] + new.payload[start:])

    with pytest.raises(DecryptionError, match="tampered"):
        cipher.decrypt(spliced, cluster_id=CLUSTER)


def test_format_1_records_still_decrypt() -> None:
    key = EncryptionKey.generate()
    stored = legacy_blob(key, PLAINTEXT, CLUSTER)

    assert KubeconfigCipher(key).decrypt(stored, cluster_id=CLUSTER) == PLAINTEXT
    # Even when the ring names that key otherwise: format 1 records carry its fingerprint.
    named = KubeconfigCipher(KeyRing({"2025": key, "2026": EncryptionKey.generate()}, "2026"))
    assert named.decrypt(stored, cluster_id=CLUSTER) == PLAINTEXT
    with pytest.raises(DecryptionError, match="tampered"):
        KubeconfigCipher(key).decrypt(stored, cluster_id=OTHER_CLUSTER)


def test_a_key_named_in_the_ring_still_opens_what_it_wrapped_under_its_fingerprint() -> None:
    key, new = EncryptionKey.generate(), EncryptionKey.generate()
    alone = KubeconfigCipher(key).encrypt(PLAINTEXT, cluster_id=CLUSTER)  # a one-key install
    named = KubeconfigCipher(KeyRing({"2025": key, "2026": new}, "2026"))

    assert named.can_decrypt_with(key.key_id) and named.key_ids == {"2025", "2026"}
    # A fingerprint names one key only; a name chosen in the settings could name any.
    assert named.proves(key.key_id) and not named.proves("2025")
    assert named.decrypt(alone, cluster_id=CLUSTER) == PLAINTEXT
    assert named.rewrap(alone, cluster_id=CLUSTER).key_id == "2026"


def test_rewrap_rewraps_only_the_data_key() -> None:
    old, new = EncryptionKey.generate(), EncryptionKey.generate()
    rotating = KubeconfigCipher(KeyRing({"old": old, "new": new}, "new"))
    original = KubeconfigCipher(KeyRing({"old": old}, "old")).encrypt(PLAINTEXT, cluster_id=CLUSTER)
    assert rotating.needs_rewrap(original)
    rewrapped = rotating.rewrap(original, cluster_id=CLUSTER)

    assert (rewrapped.format_version, rewrapped.key_id) == (2, "new")
    assert not rotating.needs_rewrap(rewrapped)
    assert rotating.rewrap(rewrapped, cluster_id=CLUSTER) is rewrapped  # idempotent
    # The kubeconfig's ciphertext is untouched: same body bytes, same pool fingerprint.
    body = 60 + header_length(original)
    assert rewrapped.payload[60 + header_length(rewrapped) :] == original.payload[body:]
    assert rewrapped.content_fingerprint() == original.content_fingerprint()
    assert rewrapped.payload != original.payload
    # Only the new key is needed from now on.
    only_new = KubeconfigCipher(KeyRing({"new": new}, "new"))
    assert only_new.decrypt(rewrapped, cluster_id=CLUSTER) == PLAINTEXT
    with pytest.raises(DecryptionError, match="key old, which is not configured"):
        only_new.decrypt(original, cluster_id=CLUSTER)


def test_rewrap_converts_format_1_to_envelopes() -> None:
    old, new = EncryptionKey.generate(), EncryptionKey.generate()
    stored = legacy_blob(old, PLAINTEXT, CLUSTER)
    # Same key as primary: format 1 still needs converting.
    assert KubeconfigCipher(old).needs_rewrap(stored)

    converted = KubeconfigCipher(new, previous=[old]).rewrap(stored, cluster_id=CLUSTER)

    assert (converted.format_version, converted.key_id) == (2, new.key_id)
    assert KubeconfigCipher(new).decrypt(converted, cluster_id=CLUSTER) == PLAINTEXT


def test_key_material_never_shows_in_repr_or_errors() -> None:
    key = EncryptionKey.generate()
    ring = KeyRing({"prod-2026": key}, "prod-2026")
    cipher = KubeconfigCipher(ring)
    texts = [repr(ring), repr(cipher), str(ring), str(cipher)]
    with pytest.raises(DecryptionError) as refused:
        cipher.decrypt(
            legacy_blob(EncryptionKey.generate(), PLAINTEXT, CLUSTER), cluster_id=CLUSTER
        )
    texts.append(str(refused.value))
    with pytest.raises(InvalidKeyError) as unknown:
        KeyRing({"a": key}, "b")
    texts.append(str(unknown.value))

    assert "prod-2026" in repr(ring)
    for text in texts:
        assert key.to_base64() not in text and key.material.hex() not in text
        assert repr(key.material) not in text


# --- key rings in the settings ----------------------------------------------------------------


def ring_settings(**encryption: object) -> EncryptionSettings:
    return load_settings(environ={}, overrides={"encryption": encryption}).encryption


def test_a_lone_key_is_a_ring_of_one_named_by_its_fingerprint() -> None:
    key = EncryptionKey.generate()

    ring = load_key_ring(ring_settings(key=key.to_base64()), generate_in=None)

    assert ring.primary == key.key_id and dict(ring.keys) == {key.key_id: key}


def test_a_ring_from_settings_files_and_the_environment(tmp_path: Path) -> None:
    old, new, extra = EncryptionKey.generate(), EncryptionKey.generate(), EncryptionKey.generate()
    key_file = tmp_path / "new.key"
    key_file.write_text(new.to_base64() + "\n")
    key_file.chmod(0o600)
    settings = load_settings(
        environ={
            "FLEETQL_ENCRYPTION_KEY": old.to_base64(),
            "FLEETQL_ENCRYPTION__KEYS": json.dumps(
                [{"id": "2027", "key_file": str(key_file)}, {"key": extra.to_base64()}]
            ),
            "FLEETQL_ENCRYPTION__PRIMARY": "2027",
        }
    )

    ring = load_key_ring(settings.encryption, generate_in=None)

    assert ring.primary == "2027"
    assert dict(ring.keys) == {old.key_id: old, "2027": new, extra.key_id: extra}
    for text in (repr(settings), repr(settings.encryption), repr(ring)):
        for key in (old, new, extra):
            assert key.to_base64() not in text


def test_bad_rings_are_refused_naming_the_setting(tmp_path: Path) -> None:
    one, two = EncryptionKey.generate().to_base64(), EncryptionKey.generate().to_base64()
    cases: list[tuple[dict[str, object], str]] = [
        (
            {"keys": [{"id": "a", "key": one}, {"id": "b", "key": two}]},
            "encryption.primary: required",
        ),
        ({"keys": [{"id": "a", "key": one}], "primary": "z"}, "encryption.primary: 'z' is not"),
        ({"keys": [{"id": "a", "key": "short"}]}, r"encryption.keys\[0\].key: .*base64"),
        (
            {"keys": [{"id": "a", "key_file": str(tmp_path / "nope")}]},
            r"keys\[0\].key_file: cannot",
        ),
        ({"keys": [{"id": "a", "key": one}, {"id": "a", "key": two}]}, "key id a is given more"),
        ({"keys": [{"id": "a"}]}, "encryption.keys.0: .*exactly one of key"),
        ({"keys": [{"id": "bad id!", "key": one}]}, "encryption.keys.0.id: must be"),
        ({"keys": [{"key": one, "colour": "red"}]}, "encryption.keys.0.colour: unknown setting"),
        ({"keys": "not json"}, "encryption.keys: .*JSON"),
    ]
    for encryption, message in cases:
        with pytest.raises(ConfigError, match=message) as refused:
            load_key_ring(ring_settings(**encryption), generate_in=None)
        assert one not in str(refused.value) and two not in str(refused.value)


# --- the start-up check with a ring ------------------------------------------------------------


@pytest.fixture
def keys_database(postgres: PostgresServer) -> str:
    return postgres.create_database("fleetql_envelope")


def ring_of(database_url: str, keys: dict[str, EncryptionKey], primary: str) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "database": {"url": database_url, "pool_size": 2},
            "encryption": {
                "keys": [{"id": key_id, "key": key.to_base64()} for key_id, key in keys.items()],
                "primary": primary,
            },
            "poller": {"enabled": False},
        },
    )


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    yield caplog


async def test_start_refuses_a_ring_without_a_key_in_use_and_names_it(
    keys_database: str, kubeconfigs: KubeconfigFactory, quiet_logs: pytest.LogCaptureFixture
) -> None:
    old, new = EncryptionKey.generate(), EncryptionKey.generate()
    async with open_services(ring_of(keys_database, {"old": old}, "old")) as services:
        context = Context(services=services, request_id="test", principal=SYSTEM)
        for name in ("one", "two"):
            result = await import_cluster(context, name=name, kubeconfig=kubeconfigs.base64())
            assert result.cluster is not None

    with pytest.raises(KeyMismatchError, match=r"need key old \(2 records\)"):
        async with open_services(ring_of(keys_database, {"new": new}, "new"), migrate=False):
            pass
    # The same name for another key is caught at start too, not at every cluster's next check.
    with pytest.raises(KeyMismatchError, match="ring's key old does not open the record"):
        async with open_services(ring_of(keys_database, {"old": new}, "old"), migrate=False):
            pass
    # With both keys, either may be primary.
    async with open_services(
        ring_of(keys_database, {"old": old, "new": new}, "new"), migrate=False
    ) as services:
        assert services.cipher.key_id == "new"
    for record in quiet_logs.records:
        message = record.getMessage()
        assert old.to_base64() not in message and new.to_base64() not in message
    assert any("primary new" in record.getMessage() for record in quiet_logs.records)


async def test_start_does_not_decrypt_records_under_fingerprint_ids(
    keys_database: str, kubeconfigs: KubeconfigFactory
) -> None:
    """A fingerprint names one key, so the start-up check needs no decryption for it (benchmarks
    seed 100,000 rows of random bytes under the key's fingerprint and start a server on them)."""
    key = EncryptionKey.generate()
    settings = load_settings(
        environ={},
        overrides={
            "database": {"url": keys_database, "pool_size": 2},
            "encryption": {"key": key.to_base64()},
        },
    )
    async with open_services(settings) as services:
        context = Context(services=services, request_id="test", principal=SYSTEM)
        result = await import_cluster(context, name="seeded", kubeconfig=kubeconfigs.base64())
        assert result.cluster is not None
        async with services.sessions() as session:
            await session.execute(
                update(ClusterCredential).values(
                    kubeconfig_ciphertext=os.urandom(1100), kubeconfig_format=1
                )
            )
            await session.commit()

    async with open_services(settings, migrate=False) as services:
        assert services.cipher.key_id == key.key_id
