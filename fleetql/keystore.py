"""Finding the encryption keys (a key ring), or making one for the embedded quick start.

Keys never leave this process: they are read from the settings, the environment or files, and
only their ids (fingerprints or the names given in ``encryption.keys``) are logged or stored.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from fleetql.config import ConfigError, EncryptionSettings
from fleetql.crypto import EncryptionKey, InvalidKeyError, KeyRing

logger = logging.getLogger(__name__)

GENERATED_KEY_FILE = "encryption.key"


def load_encryption_key(settings: EncryptionSettings, *, generate_in: Path | None) -> EncryptionKey:
    """The configured key; with none configured, the one generated in ``generate_in``.

    ``generate_in`` is only given for the embedded database: a generated key next to a database
    that lives in the same folder is no less safe than the database, while a generated key for an
    external database would be lost with the container it was made in.
    """
    if settings.key:
        return _parse(settings.key, "encryption.key")
    if settings.key_file is not None:
        return _read_key_file(settings.key_file)
    if generate_in is None:
        raise ConfigError(
            "encryption.key: required with an external database; set FLEETQL_ENCRYPTION_KEY to "
            "32 random bytes in base64 (`fleetql generate-key` prints one) or encryption.key_file"
        )
    return _generated_key(generate_in / GENERATED_KEY_FILE)


def load_key_ring(settings: EncryptionSettings, *, generate_in: Path | None) -> KeyRing:
    """The configured key ring: ``encryption.key`` (or ``key_file``) and ``encryption.keys``.

    With neither, a one-key ring of the key :func:`load_encryption_key` finds or generates, so
    an install that predates key rings keeps working unchanged.
    """
    keys: dict[str, EncryptionKey] = {}
    if settings.key or settings.key_file is not None:
        single = load_encryption_key(settings, generate_in=None)
        keys[single.key_id] = single
    for index, entry in enumerate(settings.keys):
        where = f"encryption.keys[{index}]"
        if entry.key is not None:
            key = _parse(entry.key, f"{where}.key")
        else:
            assert entry.key_file is not None  # the settings require one of the two
            key = _read_key_file(entry.key_file, f"{where}.key_file")
        key_id = entry.id or key.key_id
        if key_id in keys and keys[key_id] != key:
            raise ConfigError(f"{where}.id: two different keys are both called {key_id!r}")
        keys[key_id] = key
    if not keys:
        key = load_encryption_key(settings, generate_in=generate_in)
        keys[key.key_id] = key
    primary = settings.primary
    if primary is None:
        if len(keys) > 1:
            raise ConfigError(
                "encryption.primary: required when the key ring holds several keys; "
                f"name the one that wraps new data keys (the ring's ids: {', '.join(keys)})"
            )
        primary = next(iter(keys))
    if primary not in keys:
        raise ConfigError(
            f"encryption.primary: {primary!r} is not a key of the ring (its ids: {', '.join(keys)})"
        )
    return KeyRing(keys, primary)


def _parse(text: str, setting: str) -> EncryptionKey:
    try:
        return EncryptionKey.from_base64(text)
    except InvalidKeyError as error:
        raise ConfigError(f"{setting}: {error}") from None


def _read_key_file(path: Path, setting: str = "encryption.key_file") -> EncryptionKey:
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except OSError as error:
        raise ConfigError(f"{setting}: cannot read {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("encryption key file %s is readable by other users; chmod 600 it", path)
    return _parse(text, f"{setting} ({path})")


def _generated_key(path: Path) -> EncryptionKey:
    if path.exists():
        return _read_key_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = EncryptionKey.generate()
    # O_EXCL: two servers starting at once must not each write their own key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    with os.fdopen(fd, "w") as file:
        file.write(key.to_base64() + "\n")
    logger.warning(
        "generated a new encryption key in %s (key id %s); back it up: without it the stored "
        "kubeconfigs cannot be decrypted",
        path,
        key.key_id,
    )
    return key
