"""Tests for fleetql.crypto: a stored kubeconfig decrypts only with the right key and row."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import uuid

import pytest

from fleetql.crypto import (
    FORMAT_VERSION,
    DecryptionError,
    EncryptedBlob,
    EncryptionKey,
    InvalidKeyError,
    KubeconfigCipher,
)

PLAINTEXT = b"apiVersion: v1\nkind: Config\nusers:\n- name: dev\n  user: {token: s3cret}\n"
CLUSTER = uuid.UUID("0b7c8e5e-6a47-4f4e-9d7e-2f1f0e6c9a11")
OTHER_CLUSTER = uuid.UUID("5d0f3a9c-1e2b-4c3d-8e4f-a5b6c7d8e9f0")


def test_round_trip_returns_the_plaintext() -> None:
    cipher = KubeconfigCipher(EncryptionKey.generate())

    blob = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)

    assert blob.format_version == FORMAT_VERSION == 2
    assert PLAINTEXT not in blob.payload
    assert cipher.decrypt(blob, cluster_id=CLUSTER) == PLAINTEXT


def test_blob_names_the_key_that_encrypted_it() -> None:
    key = EncryptionKey.generate()
    cipher = KubeconfigCipher(key)

    blob = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)

    assert blob.key_id == key.key_id == cipher.key_id
    # Header (version, key id), wrapped data key (nonce, key, tag), body (nonce, text, tag).
    assert len(blob.payload) == 2 + len(key.key_id) + (12 + 32 + 16) + 12 + len(PLAINTEXT) + 16
    assert blob.payload[2 : 2 + len(key.key_id)] == key.key_id.encode()


def test_each_encryption_uses_a_fresh_nonce() -> None:
    cipher = KubeconfigCipher(EncryptionKey.generate())

    first = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)
    second = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)

    header = 2 + len(first.key_id)
    assert first.payload[header : header + 12] != second.payload[header : header + 12]
    assert first.payload[-len(PLAINTEXT) - 28 :] != second.payload[-len(PLAINTEXT) - 28 :]


@pytest.mark.parametrize("position", [0, 1, 12, 18, 40, 80, -1])
def test_tampered_payload_is_refused(position: int) -> None:
    cipher = KubeconfigCipher(EncryptionKey.generate())
    blob = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)
    payload = bytearray(blob.payload)
    payload[position] ^= 0x01

    with pytest.raises(DecryptionError, match=r"damaged|tampered|truncated"):
        cipher.decrypt(dataclasses.replace(blob, payload=bytes(payload)), cluster_id=CLUSTER)


def test_truncated_payload_is_refused() -> None:
    cipher = KubeconfigCipher(EncryptionKey.generate())
    blob = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)

    with pytest.raises(DecryptionError):
        cipher.decrypt(dataclasses.replace(blob, payload=blob.payload[:20]), cluster_id=CLUSTER)


def test_ciphertext_copied_to_another_cluster_does_not_decrypt() -> None:
    cipher = KubeconfigCipher(EncryptionKey.generate())
    blob = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)

    with pytest.raises(DecryptionError, match="belongs to another cluster"):
        cipher.decrypt(blob, cluster_id=OTHER_CLUSTER)


def test_wrong_key_is_refused_as_not_configured() -> None:
    blob = KubeconfigCipher(EncryptionKey.generate()).encrypt(PLAINTEXT, cluster_id=CLUSTER)
    other = KubeconfigCipher(EncryptionKey.generate())

    with pytest.raises(DecryptionError, match=f"key {blob.key_id}, which is not configured"):
        other.decrypt(blob, cluster_id=CLUSTER)


def test_wrong_key_under_the_expected_key_id_does_not_decrypt() -> None:
    blob = KubeconfigCipher(EncryptionKey.generate()).encrypt(PLAINTEXT, cluster_id=CLUSTER)
    other = KubeconfigCipher(EncryptionKey.generate())

    with pytest.raises(DecryptionError):
        other.decrypt(dataclasses.replace(blob, key_id=other.key_id), cluster_id=CLUSTER)


def test_unknown_format_version_is_refused() -> None:
    cipher = KubeconfigCipher(EncryptionKey.generate())
    blob = cipher.encrypt(PLAINTEXT, cluster_id=CLUSTER)

    with pytest.raises(DecryptionError, match="format version 3"):
        cipher.decrypt(dataclasses.replace(blob, format_version=3), cluster_id=CLUSTER)


def test_previous_key_decrypts_but_only_the_current_key_encrypts() -> None:
    old_key, new_key = EncryptionKey.generate(), EncryptionKey.generate()
    old_blob = KubeconfigCipher(old_key).encrypt(PLAINTEXT, cluster_id=CLUSTER)
    rotated = KubeconfigCipher(new_key, previous=[old_key])

    assert rotated.decrypt(old_blob, cluster_id=CLUSTER) == PLAINTEXT
    assert rotated.can_decrypt_with(old_key.key_id)
    assert rotated.can_decrypt_with(new_key.key_id)
    assert not rotated.can_decrypt_with(EncryptionKey.generate().key_id)
    assert rotated.encrypt(PLAINTEXT, cluster_id=CLUSTER).key_id == new_key.key_id


def test_key_round_trips_through_base64_with_surrounding_whitespace() -> None:
    key = EncryptionKey.generate()

    assert EncryptionKey.from_base64(f"  {key.to_base64()}\n") == key


def test_key_of_16_bytes_is_refused_with_its_length_but_not_its_value() -> None:
    text = base64.b64encode(b"0123456789abcdef").decode()

    with pytest.raises(InvalidKeyError) as caught:
        EncryptionKey.from_base64(text)

    message = str(caught.value)
    assert "must be 32 bytes base64-encoded; got 16 bytes" in message
    assert text not in message


@pytest.mark.parametrize(
    "text", ["not base64 at all!", "c2VjcmV0LWtleQ", "c2VjcmV0LWtleQ=====", "clé-secrète"]
)
def test_invalid_base64_key_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(InvalidKeyError) as caught:
        EncryptionKey.from_base64(text)

    message = str(caught.value)
    assert "not valid base64" in message
    assert text not in message


def test_invalid_key_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        EncryptionKey(b"short")


def test_key_id_is_stable_and_not_the_key() -> None:
    key = EncryptionKey.generate()
    same = EncryptionKey.from_base64(key.to_base64())

    assert key.key_id == same.key_id
    assert len(key.key_id) == 16
    assert int(key.key_id, 16) >= 0
    assert key.key_id not in (key.to_base64(), key.material.hex())
    assert key.key_id not in key.material.hex()
    assert key.key_id != EncryptionKey.generate().key_id


def test_key_id_of_a_known_key_is_fixed() -> None:
    # Stored ids must never change between releases, or stored kubeconfigs lose their key.
    key = EncryptionKey(bytes(range(32)))

    expected = hashlib.sha256(b"fleetql-key-id\0" + bytes(range(32))).hexdigest()[:16]
    assert key.key_id == expected == "5ffbac0451036681"


def test_repr_shows_the_key_id_but_not_the_material() -> None:
    key = EncryptionKey.generate()

    text = repr(key)

    assert key.key_id in text
    assert key.to_base64() not in text
    assert repr(key.material) not in text


def test_encrypted_blob_holds_what_is_stored() -> None:
    blob = EncryptedBlob(format_version=1, key_id="0123456789abcdef", payload=b"\x00" * 28)

    assert (blob.format_version, blob.key_id, len(blob.payload)) == (1, "0123456789abcdef", 28)
