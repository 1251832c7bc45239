"""Tests for fleetql.kubeconfig: what an imported kubeconfig may hold, and what it never leaks."""

from __future__ import annotations

import base64
import copy
import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetql.kubeconfig import (
    DEFAULT_MAX_BYTES,
    ERROR_CODES,
    MAX_CA_CERTIFICATES,
    MAX_TOKEN_BYTES,
    KubeconfigError,
    ResolvedKubeconfig,
    decode_kubeconfig_input,
    parse_kubeconfig,
    resolve_document,
)
from fleetql.yamlsafe import MAX_DEPTH

TOKEN = "tok-5ecret-e2b8c1d0a9f7"
PASSWORD = "pa55-5ecret-77d1e0"
OTHER_TOKEN = "other-5ecret-token-4a1b"
SERVER = "https://k8s.example.com:6443"


def _pem_pair(common_name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


CA_PEM, _CA_KEY = _pem_pair("test-ca")
CLIENT_CERT_PEM, CLIENT_KEY_PEM = _pem_pair("test-client")
_OTHER_CERT_PEM, OTHER_KEY_PEM = _pem_pair("other-client")
CA_DATA = _b64(CA_PEM)
CLIENT_CERT_DATA = _b64(CLIENT_CERT_PEM)
CLIENT_KEY_DATA = _b64(CLIENT_KEY_PEM)
SECRETS = (TOKEN, PASSWORD, OTHER_TOKEN, CLIENT_KEY_DATA, CLIENT_CERT_DATA, CA_DATA)


def _config(user: dict[str, Any], cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """A kubeconfig with the context `dev` (selected) and a second context `prod`."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {
                "name": "dev-cluster",
                "cluster": cluster
                if cluster is not None
                else {"server": SERVER, "certificate-authority-data": CA_DATA},
            },
            {"name": "prod-cluster", "cluster": {"server": "https://prod.example.com"}},
        ],
        "users": [
            {"name": "dev", "user": user},
            {"name": "prod-admin", "user": {"token": OTHER_TOKEN}},
        ],
        "contexts": [
            {
                "name": "dev",
                "context": {"cluster": "dev-cluster", "user": "dev", "namespace": "ns"},
            },
            {"name": "prod", "context": {"cluster": "prod-cluster", "user": "prod-admin"}},
        ],
        "current-context": "dev",
    }


def _dump(config: Any) -> bytes:
    return yaml.safe_dump(config).encode("utf-8")


def _refusal(data: bytes, *, context: str | None = None) -> KubeconfigError:
    with pytest.raises(KubeconfigError) as caught:
        parse_kubeconfig(data, context=context)
    _assert_no_secret(caught.value)
    return caught.value


def _assert_no_secret(error: KubeconfigError) -> None:
    text = f"{error} {error.message} {error!r}"
    for secret in SECRETS:
        assert secret not in text


# Valid kubeconfigs


def test_token_kubeconfig_resolves_to_its_server_and_context() -> None:
    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN})))

    assert resolved.server == SERVER
    assert resolved.context == "dev"
    assert resolved.auth_method == "token"
    assert resolved.insecure_skip_tls_verify is False
    assert resolved.document["users"] == [{"name": "dev", "user": {"token": TOKEN}}]


def test_client_certificate_kubeconfig_keeps_the_embedded_pair() -> None:
    user = {"client-certificate-data": CLIENT_CERT_DATA, "client-key-data": CLIENT_KEY_DATA}

    resolved = parse_kubeconfig(_dump(_config(user)))

    assert resolved.auth_method == "client-certificate"
    assert resolved.document["users"][0]["user"] == user


def test_numeric_looking_token_stays_the_text_written() -> None:
    data = _dump(_config({"token": "PLACEHOLDER"})).replace(b"PLACEHOLDER", b"0123")

    resolved = parse_kubeconfig(data)

    assert resolved.document["users"][0]["user"]["token"] == "0123"


def test_insecure_cluster_without_ca_is_accepted_only_when_the_server_allows_it() -> None:
    # Issue 2 accepted this always; issue 8 needs cluster_manager.allow_insecure_tls.
    cluster = {"server": SERVER, "insecure-skip-tls-verify": True}

    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN}, cluster)), allow_insecure_tls=True)

    assert resolved.insecure_skip_tls_verify is True
    assert resolved.document["clusters"][0]["cluster"] == cluster


def test_insecure_cluster_is_refused_by_default_with_insecure_tls() -> None:
    cluster = {"server": SERVER, "insecure-skip-tls-verify": True}

    error = _refusal(_dump(_config({"token": TOKEN}, cluster)))

    assert error.code == "INSECURE_TLS"
    assert "insecure-skip-tls-verify" in error.message
    assert "allow_insecure_tls" in error.message


def test_cluster_without_ca_or_insecure_flag_relies_on_system_trust() -> None:
    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN}, {"server": SERVER})))

    assert resolved.insecure_skip_tls_verify is False
    assert resolved.document["clusters"][0]["cluster"] == {"server": SERVER}


# The minimal document


def test_minimal_document_keeps_one_cluster_user_and_context() -> None:
    cluster = {
        "server": SERVER,
        "certificate-authority-data": CA_DATA,
        "tls-server-name": "Internal.Example.com",
        "disable-compression": True,
        "extensions": [{"name": "x", "extension": {}}],
    }

    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN}, cluster)))

    assert resolved.document == {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "dev-cluster",
                "cluster": {
                    "server": SERVER,
                    "tls-server-name": "internal.example.com",
                    "certificate-authority-data": CA_DATA,
                },
            }
        ],
        "users": [{"name": "dev", "user": {"token": TOKEN}}],
        "contexts": [
            {"name": "dev", "context": {"cluster": "dev-cluster", "user": "dev", "namespace": "ns"}}
        ],
        "current-context": "dev",
    }


def test_minimal_document_drops_other_contexts_secrets() -> None:
    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN})))

    assert OTHER_TOKEN.encode() not in resolved.to_yaml()
    assert "prod" not in resolved.to_yaml().decode()


def test_to_yaml_round_trips_to_a_kubeconfig_that_parses_the_same() -> None:
    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN})))

    again = parse_kubeconfig(resolved.to_yaml())

    assert again == resolved


def test_repr_of_resolved_kubeconfig_holds_no_secret() -> None:
    user = {"client-certificate-data": CLIENT_CERT_DATA, "client-key-data": CLIENT_KEY_DATA}
    for resolved in (
        parse_kubeconfig(_dump(_config({"token": TOKEN}))),
        parse_kubeconfig(_dump(_config(user))),
    ):
        text = repr(resolved)
        assert "dev" in text
        for secret in SECRETS:
            assert secret not in text


def test_resolved_kubeconfig_is_hashable_despite_its_document() -> None:
    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN})))

    assert isinstance(hash(resolved), int)
    assert isinstance(resolved, ResolvedKubeconfig)


# Input decoding


def test_base64_input_decodes_to_the_yaml_bytes() -> None:
    data = _dump(_config({"token": TOKEN}))

    assert decode_kubeconfig_input(_b64(data)) == data


def test_wrapped_base64_input_with_newlines_decodes() -> None:
    data = _dump(_config({"token": TOKEN}))
    encoded = base64.encodebytes(data).decode("ascii")  # wrapped at 76 columns

    assert decode_kubeconfig_input(encoded) == data


def test_raw_yaml_input_is_returned_as_utf8_bytes() -> None:
    text = _dump(_config({"token": TOKEN})).decode()

    assert decode_kubeconfig_input(text) == text.encode("utf-8")


def test_decoded_input_parses() -> None:
    data = _dump(_config({"token": TOKEN}))

    resolved = parse_kubeconfig(decode_kubeconfig_input(_b64(data)))

    assert resolved.server == SERVER


@pytest.mark.parametrize("value", ["abc", "YWJj=", "YWJj====", "=YWJj", "YW=Jj", "YWJjZA=X"])
def test_base64_looking_input_that_does_not_decode_is_invalid_base64(value: str) -> None:
    with pytest.raises(KubeconfigError) as caught:
        decode_kubeconfig_input(value)

    assert caught.value.code == "INVALID_BASE64"
    assert caught.value.field == "kubeconfig"


@pytest.mark.parametrize("value", ["", "   ", "\n\t\n"])
def test_empty_input_is_refused(value: str) -> None:
    with pytest.raises(KubeconfigError) as caught:
        decode_kubeconfig_input(value)

    assert caught.value.code == "INVALID_KUBECONFIG"
    assert caught.value.message == "kubeconfig is empty"


def test_raw_text_that_is_not_utf8_encodable_is_refused() -> None:
    with pytest.raises(KubeconfigError) as caught:
        decode_kubeconfig_input("clusters: \udc80")

    assert caught.value.code == "INVALID_KUBECONFIG"


def test_decoded_bytes_that_are_not_utf8_are_refused() -> None:
    error = _refusal(b"\xff\xfe\x00clusters: []")

    assert error.code == "INVALID_KUBECONFIG"
    assert "UTF-8" in error.message


# Size limits


def _two_mib_garbage() -> str:
    # Neither base64 nor YAML: only a size check made before decoding can call it TOO_LARGE.
    return "{[&a *a !x " * (2 * 1024 * 1024 // 11)


def test_two_mib_raw_input_is_too_large_before_any_parsing() -> None:
    with pytest.raises(KubeconfigError) as caught:
        decode_kubeconfig_input(_two_mib_garbage())

    assert caught.value.code == "TOO_LARGE"
    assert "512 KiB" in caught.value.message


def test_two_mib_base64_input_is_too_large_before_decoding() -> None:
    value = "QUJD" * (2 * 1024 * 1024 // 4) + "!"  # invalid base64 tail: never decoded

    with pytest.raises(KubeconfigError) as caught:
        decode_kubeconfig_input(value)

    assert caught.value.code == "TOO_LARGE"


def test_base64_of_more_than_max_bytes_is_too_large() -> None:
    value = _b64(b"a" * 1025)

    with pytest.raises(KubeconfigError) as caught:
        decode_kubeconfig_input(value, max_bytes=1024)

    assert caught.value.code == "TOO_LARGE"
    assert "1 KiB" in caught.value.message


def test_base64_of_exactly_max_bytes_is_accepted() -> None:
    assert decode_kubeconfig_input(_b64(b"a: 1\n" * 200), max_bytes=1000) == b"a: 1\n" * 200


def test_two_mib_bytes_are_too_large_for_parse_before_yaml_is_read() -> None:
    with pytest.raises(KubeconfigError) as caught:
        parse_kubeconfig(_two_mib_garbage().encode())

    assert caught.value.code == "TOO_LARGE"


# Context selection


def test_explicit_context_overrides_current_context() -> None:
    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN})), context="prod")

    assert resolved.context == "prod"
    assert resolved.server == "https://prod.example.com"
    assert resolved.document["current-context"] == "prod"
    assert TOKEN.encode() not in resolved.to_yaml()


def test_current_context_is_used_when_no_context_is_given() -> None:
    config = _config({"token": TOKEN})
    config["current-context"] = "prod"

    assert parse_kubeconfig(_dump(config)).context == "prod"


def test_unknown_context_is_refused_naming_it_and_the_available_ones() -> None:
    error = _refusal(_dump(_config({"token": TOKEN})), context="staging")

    assert (error.code, error.field) == ("INVALID_KUBECONFIG", "context")
    assert "'staging'" in error.message
    assert "'dev'" in error.message and "'prod'" in error.message


def test_missing_current_context_and_no_context_given_is_refused_on_context() -> None:
    config = _config({"token": TOKEN})
    del config["current-context"]

    error = _refusal(_dump(config))

    assert (error.code, error.field) == ("INVALID_KUBECONFIG", "context")
    assert "no current-context" in error.message


def test_current_context_naming_a_missing_context_is_refused_on_context() -> None:
    config = _config({"token": TOKEN})
    config["current-context"] = "gone"

    error = _refusal(_dump(config))

    assert (error.code, error.field) == ("INVALID_KUBECONFIG", "context")
    assert "'gone'" in error.message


def test_context_referring_to_a_missing_user_is_refused_naming_it() -> None:
    config = _config({"token": TOKEN})
    config["contexts"][0]["context"]["user"] = "nobody"

    error = _refusal(_dump(config))

    assert error.code == "INVALID_KUBECONFIG"
    assert "user 'nobody'" in error.message


def test_context_referring_to_a_missing_cluster_is_refused_naming_it() -> None:
    config = _config({"token": TOKEN})
    config["contexts"][0]["context"]["cluster"] = "nowhere"

    error = _refusal(_dump(config))

    assert "cluster 'nowhere'" in error.message


def test_duplicate_context_names_are_refused() -> None:
    config = _config({"token": TOKEN})
    config["contexts"].append(copy.deepcopy(config["contexts"][0]))

    assert "two contexts named 'dev'" in _refusal(_dump(config)).message


# Refused authentication: anything that runs a program or reads a file on the server


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("exec", {"apiVersion": "client.authentication.k8s.io/v1", "command": "aws"}, "program"),
        ("auth-provider", {"name": "oidc", "config": {"id-token": TOKEN}}, "plugin"),
        ("tokenFile", "/var/run/secrets/token", "file"),
        ("client-certificate", "/home/dev/.kube/client.crt", "file"),
        ("client-key", "/home/dev/.kube/client.key", "file"),
    ],
)
def test_user_that_runs_or_reads_on_the_server_is_refused_with_unsupported_auth(
    key: str, value: Any, reason: str
) -> None:
    # A valid token beside it does not help: the refusal comes before the credential check.
    error = _refusal(_dump(_config({"token": TOKEN, key: value})))

    assert error.code == "UNSUPPORTED_AUTH"
    assert error.message.startswith(f"user 'dev' uses {key} (")
    assert reason in error.message
    assert "token or client-certificate-data/client-key-data" in error.message


def test_exec_plugin_alone_is_refused_with_unsupported_auth() -> None:
    error = _refusal(_dump(_config({"exec": {"command": "gke-gcloud-auth-plugin"}})))

    assert error.code == "UNSUPPORTED_AUTH"
    assert "runs a program on the server" in error.message


def test_certificate_authority_file_is_refused_with_unsupported_auth() -> None:
    cluster = {"server": SERVER, "certificate-authority": "/etc/kubernetes/ca.crt"}

    error = _refusal(_dump(_config({"token": TOKEN}, cluster)))

    assert error.code == "UNSUPPORTED_AUTH"
    assert "cluster 'dev-cluster' uses certificate-authority" in error.message
    assert "certificate-authority-data" in error.message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("as", "system:admin"),
        ("as-uid", "1234"),
        ("as-groups", ["system:masters"]),
        ("as-user-extra", {"scopes": ["all"]}),
    ],
)
def test_impersonation_is_refused_rather_than_silently_dropped(key: str, value: Any) -> None:
    error = _refusal(_dump(_config({"token": TOKEN, key: value})))

    assert error.code == "UNSUPPORTED_AUTH"
    assert f"impersonation ({key})" in error.message


@pytest.mark.parametrize(
    "user",
    [
        {"username": "admin", "password": PASSWORD},
        {"username": "admin"},
        {"password": PASSWORD},
        {"token": TOKEN, "username": "admin", "password": PASSWORD},
    ],
)
def test_basic_auth_is_refused_with_unsupported_auth(user: dict[str, str]) -> None:
    # Issue 2 accepted username/password; issue 8 refuses it (removed in Kubernetes 1.19).
    error = _refusal(_dump(_config(user)))

    assert error.code == "UNSUPPORTED_AUTH"
    assert error.message.startswith("user 'dev' uses basic authentication (")
    assert "1.19" in error.message


@pytest.mark.parametrize(
    "auth_provider",
    [
        {"name": "oidc", "config": {"idp-issuer-url": "https://issuer", "id-token": TOKEN}},
        {"name": "gcp", "config": {"cmd-path": "/usr/bin/gcloud"}},
        {"name": "azure", "config": {"apiserver-id": "x"}},
        {"name": "anything-else"},
    ],
)
def test_every_auth_provider_is_refused(auth_provider: dict[str, Any]) -> None:
    error = _refusal(_dump(_config({"token": TOKEN, "auth-provider": auth_provider})))

    assert error.code == "UNSUPPORTED_AUTH"
    assert "auth-provider" in error.message


def test_proxy_url_is_refused_with_unsupported_proxy() -> None:
    cluster = {
        "server": SERVER,
        "certificate-authority-data": CA_DATA,
        "proxy-url": "http://proxy.example.com:3128",
    }

    error = _refusal(_dump(_config({"token": TOKEN}, cluster)))

    assert error.code == "UNSUPPORTED_PROXY"
    assert "proxy-url" in error.message
    assert "proxy.example.com" not in error.message


def test_refused_forms_in_unselected_users_do_not_matter() -> None:
    config = _config({"token": TOKEN})
    config["users"][1]["user"] = {"exec": {"command": "aws"}}

    assert parse_kubeconfig(_dump(config)).auth_method == "token"


# Refused clusters and users


def test_cluster_without_server_is_refused() -> None:
    error = _refusal(_dump(_config({"token": TOKEN}, {"certificate-authority-data": CA_DATA})))

    assert error.code == "INVALID_KUBECONFIG"
    assert error.message == "cluster 'dev-cluster' has no server"


@pytest.mark.parametrize(
    "server",
    [
        "k8s.example.com:6443",
        "ftp://k8s.example.com",
        "https:///no-host",
        "https://admin:hunter2@k8s.example.com",
        "https://k8s.example.com:99999",
        "https://k8s.example.com/?token=abc",
        "https://k8s.example.com/#frag",
        "https://k8s.example.com/?",
        "https://@k8s.example.com",
        "https://user@k8s.example.com",
        "http://k8s.example.com:6443",
        "HTTP://k8s.example.com",
    ],
)
def test_server_that_is_not_a_plain_https_url_is_refused_without_echoing_it(server: str) -> None:
    error = _refusal(_dump(_config({"token": TOKEN}, {"server": server})))

    assert error.code == "INVALID_SERVER"
    assert error.message.startswith("cluster 'dev-cluster' server")
    assert server not in error.message


def test_ca_data_together_with_insecure_skip_tls_verify_is_refused() -> None:
    cluster = {
        "server": SERVER,
        "certificate-authority-data": CA_DATA,
        "insecure-skip-tls-verify": True,
    }

    for allowed in (False, True):
        with pytest.raises(KubeconfigError) as caught:
            parse_kubeconfig(_dump(_config({"token": TOKEN}, cluster)), allow_insecure_tls=allowed)
        assert caught.value.code == "INSECURE_TLS"
        assert "both certificate-authority-data and insecure-skip-tls-verify" in (
            caught.value.message
        )


@pytest.mark.parametrize(
    "ca_data",
    [
        "not base64!",
        _b64(b"just some bytes"),
        _b64(b"-----BEGIN CERTIFICATE-----\nx"),
        _b64(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        _b64(CA_PEM + CA_PEM[: len(CA_PEM) // 2]),
    ],
)
def test_ca_data_that_is_not_a_base64_pem_certificate_is_refused(ca_data: str) -> None:
    cluster = {"server": SERVER, "certificate-authority-data": ca_data}

    error = _refusal(_dump(_config({"token": TOKEN}, cluster)))

    assert error.code == "INVALID_CA"
    assert "certificate-authority-data" in error.message


def test_ca_bundle_holding_a_private_key_is_refused_without_storing_it() -> None:
    cluster = {"server": SERVER, "certificate-authority-data": _b64(CA_PEM + CLIENT_KEY_PEM)}

    error = _refusal(_dump(_config({"token": TOKEN}, cluster)))

    assert error.code == "INVALID_CA"
    assert "only PEM certificates, not PRIVATE KEY" in error.message


def test_ca_bundle_with_too_many_certificates_is_refused() -> None:
    bundle = CA_PEM * (MAX_CA_CERTIFICATES + 1)
    cluster = {"server": SERVER, "certificate-authority-data": _b64(bundle)}

    error = _refusal(_dump(_config({"token": TOKEN}, cluster)))

    assert error.code == "INVALID_CA"
    assert f"at most {MAX_CA_CERTIFICATES}" in error.message


def test_ca_bundle_keeps_its_certificates_and_drops_comments_between_them() -> None:
    bundle = b"# issuer: test-ca\n" + CA_PEM + b"subject=other\n" + CLIENT_CERT_PEM
    cluster = {"server": SERVER, "certificate-authority-data": _b64(bundle)}

    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN}, cluster)))

    stored = resolved.document["clusters"][0]["cluster"]["certificate-authority-data"]
    assert base64.b64decode(stored) == CA_PEM + CLIENT_CERT_PEM


@pytest.mark.parametrize(
    "name", ["bad name", "-leading.example.com", "a..b", "x" * 64 + ".com", "k8s_internal", "é.com"]
)
def test_tls_server_name_that_is_not_a_dns_name_is_refused(name: str) -> None:
    cluster = {"server": SERVER, "certificate-authority-data": CA_DATA, "tls-server-name": name}

    error = _refusal(_dump(_config({"token": TOKEN}, cluster)))

    assert error.code == "INVALID_SERVER"
    assert "tls-server-name must be a DNS name" in error.message


@pytest.mark.parametrize(
    "token",
    [
        "abc\ndef",
        "abc\r\nX-Injected: 1",
        "abc\x00",
        "abc\tdef",
        "abc def",
        "tok\x7f",
        "tok\u0085",
        "tökén",
    ],
)
def test_token_with_control_characters_is_refused_without_echoing_it(token: str) -> None:
    error = _refusal(_dump(_config({"token": token})))

    assert error.code == "INVALID_CREDENTIAL"
    assert error.message == (
        "user 'dev' token contains control characters, spaces or non-ASCII characters"
    )


def test_token_over_16_kib_is_refused() -> None:
    assert parse_kubeconfig(_dump(_config({"token": "a" * MAX_TOKEN_BYTES}))).auth_method
    error = _refusal(_dump(_config({"token": "a" * (MAX_TOKEN_BYTES + 1)})))

    assert error.code == "INVALID_CREDENTIAL"
    assert "longer than 16 KiB" in error.message


def test_user_without_credentials_is_refused() -> None:
    error = _refusal(_dump(_config({})))

    assert error.code == "INVALID_KUBECONFIG"
    assert error.message == "user 'dev' has no credentials (token or client certificate)"


@pytest.mark.parametrize(
    ("user", "missing"),
    [
        ({"client-certificate-data": CLIENT_CERT_DATA}, "client-key-data"),
        ({"client-key-data": CLIENT_KEY_DATA}, "client-certificate-data"),
    ],
)
def test_half_a_credential_pair_is_refused_naming_the_missing_half(
    user: dict[str, str], missing: str
) -> None:
    error = _refusal(_dump(_config(user)))

    assert error.message.endswith(f"but no {missing}")


def test_two_kinds_of_credentials_are_refused() -> None:
    user = {"token": TOKEN, "client-certificate-data": CLIENT_CERT_DATA}

    error = _refusal(_dump(_config({**user, "client-key-data": CLIENT_KEY_DATA})))

    assert error.code == "INVALID_KUBECONFIG"
    assert "more than one kind of credential" in error.message


def test_client_key_that_does_not_match_the_certificate_is_refused() -> None:
    user = {"client-certificate-data": CLIENT_CERT_DATA, "client-key-data": _b64(OTHER_KEY_PEM)}

    error = _refusal(_dump(_config(user)))

    assert error.code == "INVALID_CREDENTIAL"
    assert "does not match" in error.message
    assert _b64(OTHER_KEY_PEM) not in error.message


def test_client_key_that_is_not_a_pem_key_is_refused() -> None:
    user = {"client-certificate-data": CLIENT_CERT_DATA, "client-key-data": CA_DATA}

    error = _refusal(_dump(_config(user)))

    assert "client-key-data is not a PEM private key" in error.message


def test_secret_typed_as_a_non_string_is_refused_without_echoing_it() -> None:
    data = _dump(_config({"token": "PLACEHOLDER"}))

    error = _refusal(data.replace(b"PLACEHOLDER", b"[hunter2]"))

    assert "token must be a string" in error.message
    assert "hunter2" not in error.message


# Hostile or malformed YAML


def _billion_laughs(levels: int = 9) -> bytes:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels + 1):
        refs = ",".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return ("\n".join(lines) + "\n").encode()


def test_alias_bomb_is_refused_at_its_first_anchor_without_expansion() -> None:
    started = time.perf_counter()
    error = _refusal(_billion_laughs())
    elapsed = time.perf_counter() - started

    assert error.code == "INVALID_KUBECONFIG"
    assert error.message == "anchors and aliases are not allowed in a kubeconfig"
    assert elapsed < 5  # expanding 10**9 strings would take minutes and gigabytes


def test_a_lone_anchor_is_refused() -> None:
    config = _dump(_config({"token": TOKEN})).replace(b"kind: Config", b"kind: &k Config")

    assert "anchors and aliases" in _refusal(config).message


def test_merge_key_with_alias_is_refused() -> None:
    data = b"base: &b {token: x}\nusers:\n- name: dev\n  user:\n    <<: *b\n"

    assert "anchors and aliases" in _refusal(data).message


@pytest.mark.parametrize(
    "tagged", [b"!!python/object/apply:os.system ['true']", b"!!binary aGk=", b"!custom x"]
)
def test_non_standard_yaml_tags_are_refused(tagged: bytes) -> None:
    data = _dump(_config({"token": TOKEN})).replace(b"kind: Config", b"kind: " + tagged)

    error = _refusal(data)

    assert error.code == "INVALID_KUBECONFIG"
    assert "tag" in error.message


@pytest.mark.parametrize("tag", [b"!!str", b"!!map", b"!", b"!<tag:yaml.org,2002:str>"])
def test_even_standard_yaml_tags_are_refused(tag: bytes) -> None:
    # Issue 2 allowed JSON-compatible tags; issue 8 refuses every explicit tag.
    data = _dump(_config({"token": TOKEN})).replace(b"kind: Config", b"kind: " + tag + b" Config")

    error = _refusal(data)

    assert error.code == "INVALID_KUBECONFIG"
    assert "YAML tag" in error.message


def test_merge_key_without_alias_is_refused() -> None:
    data = _dump(_config({"token": TOKEN})).replace(
        f"token: {TOKEN}".encode(), f"<<: {{token: {OTHER_TOKEN}}}\n    token: {TOKEN}".encode()
    )

    error = _refusal(data)

    assert error.code == "INVALID_KUBECONFIG"
    assert "merge keys (<<) are not allowed" in error.message


def test_json_kubeconfig_is_accepted() -> None:
    data = json.dumps(_config({"token": TOKEN})).encode()

    resolved = parse_kubeconfig(data)

    assert resolved.server == SERVER
    assert resolved.document["users"] == [{"name": "dev", "user": {"token": TOKEN}}]


def test_json_kubeconfig_with_duplicate_keys_is_refused() -> None:
    data = json.dumps(_config({"token": TOKEN})).replace(
        '"kind": "Config"', '"kind": "Config", "kind": "Other"'
    )

    assert "'kind' appears twice" in _refusal(data.encode()).message


def test_nesting_beyond_a_small_depth_is_refused() -> None:
    config = _config({"token": TOKEN})
    deep: Any = "x"
    for _ in range(8):
        deep = {"d": deep}
    config["clusters"][0]["cluster"]["extensions"] = [{"name": "deep", "extension": deep}]

    error = _refusal(_dump(config))

    assert error.message == f"kubeconfig is nested too deeply (more than {MAX_DEPTH} levels)"


def test_a_real_minikube_kubeconfig_with_extensions_is_accepted_and_stripped() -> None:
    extension = {
        "name": "cluster_info",
        "extension": {"last-update": "Mon, 01 Jan 2024", "provider": "minikube.sigs.k8s.io"},
    }
    config = _config({"token": TOKEN})
    config["clusters"][0]["cluster"]["extensions"] = [copy.deepcopy(extension)]
    config["contexts"][0]["context"]["extensions"] = [copy.deepcopy(extension)]
    config["users"][0]["user"]["extensions"] = [copy.deepcopy(extension)]
    config["preferences"] = {"colors": True, "extensions": [copy.deepcopy(extension)]}
    config["extensions"] = [copy.deepcopy(extension)]

    stored = parse_kubeconfig(_dump(config)).to_yaml()

    assert b"extension" not in stored and b"preferences" not in stored
    assert b"minikube" not in stored


@pytest.mark.parametrize("document", [b"- a\n- b\n", b"just text\n", b"42\n"])
def test_document_that_is_not_a_mapping_is_refused(document: bytes) -> None:
    error = _refusal(document)

    assert error.code == "INVALID_KUBECONFIG"
    assert "must be a YAML mapping" in error.message


def test_multiple_documents_are_refused() -> None:
    data = _dump(_config({"token": TOKEN}))

    assert "single YAML document" in _refusal(data + b"---\n" + data).message


def test_duplicate_keys_are_refused() -> None:
    data = _dump(_config({"token": TOKEN})).replace(
        f"token: {TOKEN}".encode(), f"token: {TOKEN}\n    token: {OTHER_TOKEN}".encode()
    )

    assert "'token' appears twice" in _refusal(data).message


def test_deeply_nested_yaml_is_refused_without_exhausting_the_stack() -> None:
    assert "nested too deeply" in _refusal(b"a: " + b"[" * 50_000).message


def test_yaml_syntax_error_names_the_line_but_not_the_text() -> None:
    data = _dump(_config({"token": TOKEN})).replace(
        f"token: {TOKEN}".encode(), f'token: "{TOKEN}'.encode()
    )

    error = _refusal(data)

    assert error.message.startswith("kubeconfig is not valid YAML")
    assert "line" in error.message


def test_empty_document_is_refused() -> None:
    assert _refusal(b"# only a comment\n").message == "kubeconfig is empty"


# Secrets in messages


def _every_refusal() -> list[Callable[[], object]]:
    cert_user = {"client-certificate-data": CLIENT_CERT_DATA, "client-key-data": CLIENT_KEY_DATA}
    return [
        lambda: parse_kubeconfig(_dump(_config({"token": TOKEN})), context="nope"),
        lambda: parse_kubeconfig(_dump(_config({**cert_user, "token": TOKEN}))),
        lambda: parse_kubeconfig(_dump(_config({"password": PASSWORD}))),
        lambda: parse_kubeconfig(_dump(_config({"token": TOKEN, "exec": {"command": TOKEN}}))),
        lambda: parse_kubeconfig(
            _dump(_config({"token": TOKEN}, {"server": SERVER + "?" + PASSWORD}))
        ),
        lambda: decode_kubeconfig_input(_b64(PASSWORD.encode())[:-1]),
    ]


def test_no_error_message_or_repr_contains_a_secret() -> None:
    for attempt in _every_refusal():
        with pytest.raises(KubeconfigError) as caught:
            attempt()
        _assert_no_secret(caught.value)


def test_default_limit_is_half_a_mebibyte() -> None:
    assert DEFAULT_MAX_BYTES == 512 * 1024


# A stored kubeconfig, checked again


def test_a_stored_document_passes_the_same_rules_again() -> None:
    resolved = parse_kubeconfig(_dump(_config({"token": TOKEN})))

    assert resolve_document(yaml.safe_load(resolved.to_yaml())) == resolved


@pytest.mark.parametrize(
    ("user", "cluster", "code"),
    [
        ({"username": "admin", "password": PASSWORD}, None, "UNSUPPORTED_AUTH"),
        ({"token": TOKEN}, {"server": SERVER, "insecure-skip-tls-verify": True}, "INSECURE_TLS"),
        ({"token": TOKEN}, {"server": "http://k8s.example.com"}, "INVALID_SERVER"),
    ],
)
def test_a_document_stored_under_the_old_rules_is_refused(
    user: dict[str, Any], cluster: dict[str, Any] | None, code: str
) -> None:
    with pytest.raises(KubeconfigError) as caught:
        resolve_document(_config(user, cluster))

    assert caught.value.code == code
    _assert_no_secret(caught.value)


def test_every_error_code_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()

    for code in ERROR_CODES:
        assert f"| `{code}` | `kubeconfig`" in readme, code
