"""Safe parsing of an imported kubeconfig.

A kubeconfig is untrusted input that later drives connections made from the server, so fleetql
never hands one to kubernetes_asyncio's loader (which reads ``tokenFile`` from the server's disk,
starts ``exec`` plugins with the server's environment, honours ``proxy-url`` and writes ``*-data``
to temporary files that stay until the process exits; Flux had exactly this as CVE-2022-24817).
It is reduced to the one context the user chose, from validated fields only, with embedded
credentials only; everything that would run a program, read a file, change where requests go or
weaken TLS is refused with a specific code, and no secret value ever reaches an error message or
a repr. The same rules are applied again to a stored kubeconfig before the poller uses it.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from fleetql.yamlsafe import UnsafeYamlError, load_untrusted_yaml

# libyaml's emitter when the wheel has it: about 8 times faster than the pure-Python one, and
# every import and update serialises the kubeconfig it stores.
_SAFE_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

DEFAULT_MAX_BYTES = 512 * 1024
# A service-account JWT is about 1 KiB; more than this is not a bearer token.
MAX_TOKEN_BYTES = 16 * 1024
# A CA bundle names the few authorities that sign one API server's certificate.
MAX_CA_CERTIFICATES = 64

# The codes a refused kubeconfig is reported with (the userError ``code``); README lists them.
ERROR_CODES = frozenset(
    {
        "INVALID_BASE64",
        "INVALID_KUBECONFIG",
        "UNSUPPORTED_AUTH",
        "UNSUPPORTED_PROXY",
        "INSECURE_TLS",
        "INVALID_SERVER",
        "INVALID_CREDENTIAL",
        "INVALID_CA",
        "TOO_LARGE",
        # The server is (or resolves to) an address fleetql does not connect to; checked by
        # fleetql.netpolicy when a kubeconfig is imported, not by the parsing here.
        "FORBIDDEN_ADDRESS",
    }
)

_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]+", re.ASCII)
_WHITESPACE = re.compile(r"\s+", re.ASCII)
# What HTTP allows in a header value and a bearer token needs: visible ASCII, no spaces.
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+", re.ASCII)
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL | re.ASCII
)
_MAX_NAMES_LISTED = 20
_ACCEPTED = (
    "fleetql only accepts embedded credentials: token or client-certificate-data/client-key-data"
)
_FLATTEN_HINT = "`kubectl config view --raw --minify --flatten` embeds referenced files"
# Keys of the selected user that make kubectl run a program or read a file; refused, not dropped,
# because dropping them would silently change which identity fleetql connects as.
_USER_REFUSED = (
    ("exec", "runs a program on the server", False),
    ("auth-provider", "runs a login plugin on the server", False),
    ("tokenFile", "reads a file on the server", True),
    ("client-certificate", "reads a file on the server", True),
    ("client-key", "reads a file on the server", True),
)
_IMPERSONATION = ("as", "as-uid", "as-groups", "as-user-extra")
_CREDENTIAL_LABELS = {
    "token": "token",
    "client-certificate": "client-certificate-data/client-key-data",
}


class KubeconfigError(Exception):
    """An expected refusal; its code/field/message go to the GraphQL client as a userError.

    ``code`` is one of :data:`ERROR_CODES`; ``field`` is ``kubeconfig`` or ``context``. Messages
    name the offending field and never contain a secret value from the input.
    """

    def __init__(self, code: str, message: str, field: str = "kubeconfig") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class ResolvedKubeconfig:
    """The selected context of an imported kubeconfig, reduced to what fleetql needs to connect.

    ``document`` holds credentials, so it is left out of repr (and of hashing, being a dict).
    """

    server: str
    context: str
    auth_method: str  # "token" | "client-certificate"
    insecure_skip_tls_verify: bool
    document: dict[str, Any] = field(repr=False, hash=False)

    def to_yaml(self) -> bytes:
        """Serialise the minimal kubeconfig, as it is encrypted and stored."""
        return yaml.dump(self.document, Dumper=_SAFE_DUMPER, sort_keys=False).encode("utf-8")


def decode_kubeconfig_input(value: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The API accepts the file base64-encoded, or raw YAML text. Returns the YAML bytes.

    Raw YAML always holds a ':' (it must be a mapping), which is outside the base64 alphabet, so
    text made only of base64 characters and whitespace is unambiguously base64. Whether the YAML
    is a mapping is checked by :func:`parse_kubeconfig`.
    """
    encoded_limit = _base64_length(max_bytes)
    # Allow for base64 wrapped at 64 columns with CRLF, the densest wrapping in common use.
    if len(value) > encoded_limit + (encoded_limit // 64 + 1) * 2:
        raise _too_large(max_bytes)
    if not value.strip():
        raise _invalid("kubeconfig is empty")
    if _BASE64_TEXT.fullmatch(value):
        compact = _WHITESPACE.sub("", value)
        if len(compact) > encoded_limit:
            raise _too_large(max_bytes)
        try:
            decoded = _strict_base64(compact)
        except binascii.Error:
            raise KubeconfigError(
                "INVALID_BASE64",
                "kubeconfig looks base64-encoded but is not valid base64 "
                "(check that it was copied whole); or paste the YAML text itself",
            ) from None
        if len(decoded) > max_bytes:
            raise _too_large(max_bytes)
        if not decoded.strip():
            raise _invalid("kubeconfig is empty")
        return decoded
    if len(value) > max_bytes:
        raise _too_large(max_bytes)
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid("kubeconfig is not valid UTF-8 text") from None
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


def parse_kubeconfig(
    data: bytes,
    *,
    context: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_insecure_tls: bool = False,
) -> ResolvedKubeconfig:
    """Resolve one context of a kubeconfig into a minimal, embedded-credentials-only kubeconfig.

    ``context`` picks the context; when it is None or empty, ``current-context`` is used.
    ``allow_insecure_tls`` is ``cluster_manager.allow_insecure_tls``. Raises
    :class:`KubeconfigError` for every refusal.
    """
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    loaded = _load_yaml(data)
    if loaded is None:
        raise _invalid("kubeconfig is empty")
    return resolve_document(loaded, context=context, allow_insecure_tls=allow_insecure_tls)


def resolve_document(
    loaded: Any, *, context: str | None = None, allow_insecure_tls: bool = False
) -> ResolvedKubeconfig:
    """The rules of :func:`parse_kubeconfig` applied to already-loaded data: the poller runs a
    stored kubeconfig through them again, so one stored under older, looser rules is not used."""
    if not isinstance(loaded, dict):
        raise _invalid("kubeconfig must be a YAML mapping with clusters, users and contexts")
    clusters = _named_entries(loaded, "clusters", "cluster")
    users = _named_entries(loaded, "users", "user")
    contexts = _named_entries(loaded, "contexts", "context")
    context_name = _choose_context(loaded, contexts, context)
    chosen = contexts[context_name]
    cluster_name = _reference(chosen, "cluster", context_name, clusters)
    user_name = _reference(chosen, "user", context_name, users)
    cluster, user = clusters[cluster_name], users[user_name]

    _refuse_unsupported(cluster_name, cluster, user_name, user)
    minimal_cluster = _resolve_cluster(cluster_name, cluster, allow_insecure_tls)
    minimal_user, auth_method = _resolve_user(user_name, user)
    # Everything else (extensions, preferences, the other contexts, clusters and users) is left
    # behind: it is never stored.
    minimal_context = {"cluster": cluster_name, "user": user_name}
    namespace = _string_field(chosen, "namespace", f"context {_quote(context_name)}")
    if namespace is not None:
        minimal_context["namespace"] = namespace

    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": minimal_cluster}],
        "users": [{"name": user_name, "user": minimal_user}],
        "contexts": [{"name": context_name, "context": minimal_context}],
        "current-context": context_name,
    }
    return ResolvedKubeconfig(
        server=minimal_cluster["server"],
        context=context_name,
        auth_method=auth_method,
        insecure_skip_tls_verify=bool(minimal_cluster.get("insecure-skip-tls-verify", False)),
        document=document,
    )


def _load_yaml(data: bytes) -> Any:
    try:
        return load_untrusted_yaml(data)
    except UnsafeYamlError as error:
        raise _invalid(str(error)) from None


def _named_entries(document: dict[Any, Any], key: str, inner: str) -> dict[str, dict[Any, Any]]:
    """Index a kubeconfig list (`clusters`, `users`, `contexts`) by name, as kubectl does."""
    raw = document.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise _invalid(f"kubeconfig {key} must be a list")
    entries: dict[str, dict[Any, Any]] = {}
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise _invalid(f"{key}[{index}] must be a mapping with name and {inner}")
        name = entry.get("name")
        if name is None or name == "":
            raise _invalid(f"{key}[{index}] has no name")
        if not isinstance(name, str):
            raise _invalid(f"{key}[{index}] name must be a string; quote it")
        if name in entries:
            raise _invalid(f"kubeconfig has two {key} named {_quote(name)}")
        body = entry.get(inner)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise _invalid(f"{inner} {_quote(name)} must have a {inner} mapping")
        entries[name] = body
    return entries


def _choose_context(
    document: dict[Any, Any], contexts: dict[str, dict[Any, Any]], requested: str | None
) -> str:
    available = _available_contexts(contexts)
    if requested:
        if requested not in contexts:
            raise _invalid(
                f"context {_quote(requested)} is not in the kubeconfig; {available}",
                field="context",
            )
        return requested
    current = document.get("current-context")
    if current is None or current == "":
        raise _invalid(
            f"kubeconfig has no current-context and no context was given; {available}",
            field="context",
        )
    if not isinstance(current, str):
        raise _invalid("kubeconfig current-context must be a string")
    if current not in contexts:
        raise _invalid(
            f"current-context {_quote(current)} is not in the kubeconfig; give a context: "
            f"{available}",
            field="context",
        )
    return current


def _reference(
    context: dict[Any, Any], key: str, context_name: str, table: dict[str, dict[Any, Any]]
) -> str:
    name = context.get(key)
    if name is None or name == "":
        raise _invalid(f"context {_quote(context_name)} names no {key}")
    if not isinstance(name, str):
        raise _invalid(f"context {_quote(context_name)} {key} must be a string")
    if name not in table:
        raise _invalid(
            f"context {_quote(context_name)} refers to {key} {_quote(name)}, "
            "which is not in the kubeconfig"
        )
    return name


def _refuse_unsupported(
    cluster_name: str, cluster: dict[Any, Any], user_name: str, user: dict[Any, Any]
) -> None:
    """Refuse, before any credential check, what would make the server run or read something,
    act as someone else, or send its requests elsewhere."""
    user_label = f"user {_quote(user_name)}"
    for key, why, is_file in _USER_REFUSED:
        if _present(user.get(key)):
            hint = f"; {_FLATTEN_HINT}" if is_file else ""
            raise KubeconfigError(
                "UNSUPPORTED_AUTH", f"{user_label} uses {key} ({why}); {_ACCEPTED}{hint}"
            )
    for key in _IMPERSONATION:
        if _present(user.get(key)):
            raise KubeconfigError(
                "UNSUPPORTED_AUTH",
                f"{user_label} uses impersonation ({key}), which fleetql does not support; "
                "remove it to connect as the credential's own identity",
            )
    for key in ("username", "password"):
        if _present(user.get(key)):
            raise KubeconfigError(
                "UNSUPPORTED_AUTH",
                f"{user_label} uses basic authentication ({key}), which Kubernetes removed in "
                f"1.19; {_ACCEPTED}",
            )
    cluster_label = f"cluster {_quote(cluster_name)}"
    if _present(cluster.get("certificate-authority")):
        raise KubeconfigError(
            "UNSUPPORTED_AUTH",
            f"{cluster_label} uses certificate-authority (reads a file on the server); embed "
            f"the CA as certificate-authority-data instead; {_FLATTEN_HINT}",
        )
    if _present(cluster.get("proxy-url")):
        raise KubeconfigError(
            "UNSUPPORTED_PROXY",
            f"{cluster_label} sets proxy-url; fleetql connects to API servers directly and "
            "never through a proxy named in a kubeconfig: remove proxy-url",
        )


def _resolve_cluster(
    name: str, cluster: dict[Any, Any], allow_insecure_tls: bool
) -> dict[str, Any]:
    label = f"cluster {_quote(name)}"
    server = _string_field(cluster, "server", label)
    if server is None:
        raise _invalid(f"{label} has no server")
    _check_server(label, server)
    insecure = cluster.get("insecure-skip-tls-verify")
    if insecure is None:
        insecure = False
    if not isinstance(insecure, bool):
        raise _invalid(f"{label} insecure-skip-tls-verify must be true or false")
    minimal: dict[str, Any] = {"server": server}
    ca_data = _string_field(cluster, "certificate-authority-data", label)
    if insecure:
        if ca_data is not None:
            raise KubeconfigError(
                "INSECURE_TLS",
                f"{label} sets both certificate-authority-data and insecure-skip-tls-verify; "
                "remove insecure-skip-tls-verify (kubectl refuses this combination too)",
            )
        if not allow_insecure_tls:
            raise KubeconfigError(
                "INSECURE_TLS",
                f"{label} sets insecure-skip-tls-verify: true, which this server does not allow "
                "(cluster_manager.allow_insecure_tls); embed the cluster's CA as "
                "certificate-authority-data instead",
            )
    server_name = _string_field(cluster, "tls-server-name", label)
    if server_name is not None:
        if not _is_dns_name(server_name):
            raise KubeconfigError(
                "INVALID_SERVER", f"{label} tls-server-name must be a DNS name (like k8s.internal)"
            )
        minimal["tls-server-name"] = server_name.lower()
    if ca_data is not None:
        minimal["certificate-authority-data"] = _encode_embedded(_ca_bundle(label, ca_data))
    elif insecure:
        minimal["insecure-skip-tls-verify"] = True
    # With neither, the system's trusted CAs verify the server.
    return minimal


def _check_server(label: str, server: str) -> None:
    # The URL itself is not echoed: it might carry credentials in its userinfo.
    if any(char.isspace() or not char.isprintable() for char in server):
        raise _bad_server(f"{label} server contains whitespace or control characters")
    try:
        parts = urlsplit(server)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError:
        raise _bad_server(f"{label} server is not a valid URL") from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise _bad_server(f"{label} server must be an https:// URL with a host")
    if "@" in parts.netloc:
        raise _bad_server(f"{label} server URL must not contain a username or password")
    if parts.query or parts.fragment or "?" in server or "#" in server:
        raise _bad_server(f"{label} server URL must not have a query or fragment")


def _is_dns_name(name: str) -> bool:
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    return len(name) <= 253 and all(_DNS_LABEL.fullmatch(part) for part in labels)


def _ca_bundle(label: str, ca_data: str) -> bytes:
    """The bundle's certificates, re-encoded: only CERTIFICATE blocks, each one parsed, at most
    MAX_CA_CERTIFICATES. Text between blocks (comments in a bundle) is dropped."""
    what = f"{label} certificate-authority-data"
    try:
        pem = _strict_base64(_WHITESPACE.sub("", ca_data))
    except (binascii.Error, ValueError):
        raise _bad_ca(f"{what} is not valid base64") from None
    blocks = list(_PEM_BLOCK.finditer(pem))
    if not blocks:
        raise _bad_ca(f"{what} does not contain a PEM certificate")
    if pem.count(b"-----BEGIN ") != len(blocks):
        raise _bad_ca(f"{what} holds a PEM block without its END line (cut short?)")
    if len(blocks) > MAX_CA_CERTIFICATES:
        raise _bad_ca(
            f"{what} holds {len(blocks)} PEM blocks; at most {MAX_CA_CERTIFICATES} certificates "
            "(the authorities that sign this API server's certificate)"
        )
    kinds = {block.group(1).decode("ascii") for block in blocks} - {"CERTIFICATE"}
    if kinds:
        raise _bad_ca(f"{what} must hold only PEM certificates, not {', '.join(sorted(kinds))}")
    try:
        certificates = [x509.load_pem_x509_certificate(block.group(0)) for block in blocks]
    except ValueError:
        raise _bad_ca(f"{what} does not contain a valid PEM certificate") from None
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)


def _resolve_user(name: str, user: dict[Any, Any]) -> tuple[dict[str, Any], str]:
    label = f"user {_quote(name)}"
    token = _string_field(user, "token", label)
    cert = _string_field(user, "client-certificate-data", label)
    key = _string_field(user, "client-key-data", label)
    kinds = [
        kind
        for kind, present in (
            ("token", token is not None),
            ("client-certificate", cert is not None or key is not None),
        )
        if present
    ]
    if not kinds:
        raise _invalid(f"{label} has no credentials (token or client certificate)")
    if len(kinds) > 1:
        found = " and ".join(_CREDENTIAL_LABELS[kind] for kind in kinds)
        raise _invalid(f"{label} has more than one kind of credential ({found}); keep exactly one")
    if token is not None:
        _check_token(label, token)
        return {"token": token}, "token"
    if cert is None or key is None:
        have, missing = (
            ("client-certificate-data", "client-key-data")
            if key is None
            else ("client-key-data", "client-certificate-data")
        )
        raise _invalid(f"{label} has {have} but no {missing}")
    cert_pem = _decode_embedded(cert, f"{label} client-certificate-data")
    key_pem = _decode_embedded(key, f"{label} client-key-data")
    _check_client_pair(label, cert_pem, key_pem)
    return {
        "client-certificate-data": _encode_embedded(cert_pem),
        "client-key-data": _encode_embedded(key_pem),
    }, "client-certificate"


def _check_token(label: str, token: str) -> None:
    # Sent as an HTTP header: a CR or LF would let it add headers of its own.
    if len(token.encode("utf-8")) > MAX_TOKEN_BYTES:
        raise _bad_credential(f"{label} token is longer than {MAX_TOKEN_BYTES // 1024} KiB")
    if not _TOKEN_TEXT.fullmatch(token):
        raise _bad_credential(
            f"{label} token contains control characters, spaces or non-ASCII characters"
        )


def _check_client_pair(label: str, cert_pem: bytes, key_pem: bytes) -> None:
    """Check the client certificate and key now, so a bad pair fails at import, not at poll."""
    cert_what = f"{label} client-certificate-data"
    key_what = f"{label} client-key-data"
    certificate = _load_certificates(cert_pem, cert_what)[0]
    if b"PRIVATE KEY-----" not in key_pem:
        raise _bad_credential(f"{key_what} is not a PEM private key")
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise _bad_credential(
            f"{key_what} is encrypted with a passphrase; fleetql needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise _bad_credential(f"{key_what} is not a valid PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*spki) != private_key.public_key().public_bytes(*spki):
        raise _bad_credential(f"{key_what} does not match client-certificate-data")


def _decode_embedded(value: str, what: str) -> bytes:
    try:
        return _strict_base64(_WHITESPACE.sub("", value))
    except (binascii.Error, ValueError):
        raise _bad_credential(f"{what} is not valid base64") from None


def _strict_base64(compact: str) -> bytes:
    # strict_mode still accepts surplus padding ("YWJj=="); a truncated paste must not decode.
    if len(compact) % 4 or len(compact) - len(compact.rstrip("=")) > 2:
        raise binascii.Error("base64 length is not a multiple of 4")
    return binascii.a2b_base64(compact, strict_mode=True)


def _encode_embedded(data: bytes) -> str:
    # Re-encoded rather than copied, so the stored document carries no stray whitespace.
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _load_certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise _bad_credential(f"{what} does not contain a PEM certificate")
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise _bad_credential(f"{what} does not contain a valid PEM certificate") from None


def _string_field(mapping: dict[Any, Any], key: str, owner: str) -> str | None:
    """A string setting, or None when absent, null or blank (kubectl treats those as unset)."""
    value = mapping.get(key)
    if not _present(value):
        return None
    if not isinstance(value, str):
        # Only the key is named: the value may be a secret.
        raise _invalid(f"{owner} {key} must be a string; quote it in the YAML")
    return value


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _available_contexts(table: dict[str, dict[Any, Any]]) -> str:
    if not table:
        return "the kubeconfig defines no contexts"
    names = [_quote(name) for name in list(table)[:_MAX_NAMES_LISTED]]
    more = len(table) - len(names)
    suffix = f" and {more} more" if more > 0 else ""
    return "available contexts: " + ", ".join(names) + suffix


def _quote(name: str) -> str:
    """Quote a (non-secret) name for a message, escaping control characters and capping length."""
    return repr(name if len(name) <= 100 else name[:100] + "...")


def _base64_length(size: int) -> int:
    return (size + 2) // 3 * 4


def _invalid(message: str, field: str = "kubeconfig") -> KubeconfigError:
    return KubeconfigError("INVALID_KUBECONFIG", message, field)


def _bad_server(message: str) -> KubeconfigError:
    return KubeconfigError("INVALID_SERVER", message)


def _bad_ca(message: str) -> KubeconfigError:
    return KubeconfigError("INVALID_CA", message)


def _bad_credential(message: str) -> KubeconfigError:
    return KubeconfigError("INVALID_CREDENTIAL", message)


def _too_large(max_bytes: int) -> KubeconfigError:
    kib = max_bytes // 1024 if max_bytes % 1024 == 0 else round(max_bytes / 1024, 1)
    return KubeconfigError(
        "TOO_LARGE",
        f"kubeconfig is larger than the {kib} KiB limit; export only the context you need "
        "(`kubectl config view --raw --minify --flatten`)",
    )
