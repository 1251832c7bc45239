"""Settings from YAML and the environment; bad ones stop the start naming the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from fleetql.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_defaults_need_no_file() -> None:
    settings = load_settings(environ={})
    assert settings.server.port == 8080 and settings.server.host == "127.0.0.1"
    assert settings.database.url is None
    assert settings.database.embedded_data_dir == Path(".fleetql/pgdata")
    assert settings.poller.check_interval == timedelta(minutes=5)
    assert settings.server.cors_origins == ()


def test_shipped_config_file_loads() -> None:
    settings = load_settings(REPO / "configs" / "config.yaml", environ={})
    assert settings.poller.max_concurrency == 10


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("poller:\n  check_interval: 1m\nserver:\n  port: 9000\n")
    settings = load_settings(
        path,
        environ={
            "FLEETQL_POLLER__CHECK_INTERVAL": "30s",
            "FLEETQL_SERVER__CORS_ORIGINS": "https://a.example, https://b.example",
        },
    )
    assert settings.poller.check_interval == timedelta(seconds=30)
    assert settings.server.port == 9000
    assert settings.server.cors_origins == ("https://a.example", "https://b.example")


def test_plain_database_url_and_key_variables_are_honoured() -> None:
    settings = load_settings(
        environ={"DATABASE_URL": "postgres://u:p@db/fleet", "FLEETQL_ENCRYPTION_KEY": "k"}
    )
    assert settings.database.url == "postgresql+asyncpg://u:p@db/fleet"
    assert settings.encryption.key == "k"
    assert "k" not in repr(settings.encryption).replace("key", "")


@pytest.mark.parametrize(
    ("yaml_text", "environ", "message"),
    [
        ("poller:\n  chek_interval: 1m\n", {}, "poller.chek_interval: unknown setting"),
        ("nonsense:\n  a: 1\n", {}, "nonsense: unknown setting"),
        ("", {"FLEETQL_POLLER__MAX_CONCURENCY": "3"}, "poller.max_concurency: unknown setting"),
        ("", {"FLEETQL_POLLER__CHECK_INTERVAL": "soon"}, "poller.check_interval"),
        ("", {"FLEETQL_SERVER__PORT": "http"}, "server.port"),
        ("", {"FLEETQL_POLLER__MAX_CONCURRENCY": "0"}, "poller.max_concurrency"),
        ("", {"FLEETQL_DATABASE__URL": "mysql://x"}, "database.url"),
        ("", {"FLEETQL_PORT": "1"}, "FLEETQL_PORT is not a setting"),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, yaml_text: str, environ: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(path, environ=environ)


def test_bad_value_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"FLEETQL_DATABASE__URL": "mysql://user:sup3rsecret@db/x"})
    assert "sup3rsecret" not in str(caught.value)


def test_unreadable_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_key_file_is_read_and_its_problems_named(tmp_path: Path) -> None:
    from fleetql.config import EncryptionSettings
    from fleetql.crypto import EncryptionKey
    from fleetql.keystore import load_encryption_key

    key = EncryptionKey.generate()
    good = tmp_path / "key"
    good.write_text(key.to_base64() + "\n")
    good.chmod(0o600)
    assert (
        load_encryption_key(EncryptionSettings(key_file=good), generate_in=None).key_id
        == key.key_id
    )

    short = tmp_path / "short"
    short.write_text("c2hvcnQ=")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match=r"encryption.key_file \(.*short\).*32"):
        load_encryption_key(EncryptionSettings(key_file=short), generate_in=None)
    with pytest.raises(ConfigError, match=r"encryption.key_file: cannot read .*missing"):
        load_encryption_key(EncryptionSettings(key_file=tmp_path / "missing"), generate_in=None)
