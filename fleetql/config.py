"""Settings: a YAML file, overridden key by key from the environment.

Every key lives in a section (``server``, ``graphql``, ``database``, ``encryption``, ``poller``,
``events``, ``cluster_manager``, ``auth``, ``log``, ``metrics``) and can be set by
``FLEETQL_<SECTION>__<KEY>``; plain ``DATABASE_URL`` and ``FLEETQL_ENCRYPTION_KEY`` are
honoured because that is what platforms and secret stores set.
Unknown keys and bad values stop the start with a message that names the key, because a typo in
a setting that silently falls back to its default is worse than no start at all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetql.access import Role
from fleetql.labels import parse_label_selector
from fleetql.netpolicy import never_allowed, parse_network

ENV_PREFIX = "FLEETQL_"
# Variables with our prefix that are not settings: they belong to the test suite or name the file.
_NOT_SETTINGS = {"FLEETQL_CONFIG", "FLEETQL_TEST_DATABASE_URL"}
# Flat aliases for values that secret stores and platforms commonly inject.
_ALIASES = {
    "DATABASE_URL": ("database", "url"),
    "FLEETQL_ENCRYPTION_KEY": ("encryption", "key"),
    "FLEETQL_ENCRYPTION_KEY_FILE": ("encryption", "key_file"),
}

_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(Exception):
    """The settings cannot be used; the message names the key and the problem."""


def parse_duration(value: Any) -> timedelta:
    """Accept ``30s``, ``5m``, ``1h``, ``250ms`` or a number of seconds, as the seed's YAML does."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration; use a number with ms, s, m, h or d (e.g. 30s)"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _split_commas(value: Any) -> Any:
    """A list may come as one comma-separated string (from the environment)."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


CommaSeparated = Annotated[tuple[str, ...], BeforeValidator(_split_commas)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    cors_origins: CommaSeparated = ()
    # Request bodies larger than this get 413 before they are parsed (uvicorn has no limit). It
    # must hold the largest kubeconfig, base64-encoded, in a JSON request: see Settings below.
    max_body_bytes: int = Field(default=1024 * 1024, ge=16 * 1024)
    log_level: str = "info"
    # From SIGTERM to exit: running requests get most of it, closing the pools the rest. Keep it
    # a few seconds below the orchestrator's kill deadline (Kubernetes: 30 s by default).
    shutdown_grace: Duration = timedelta(seconds=25)


class GraphQLSettings(_Section):
    """What the GraphQL endpoint offers and how large a document may be (README "HTTP
    hardening"). Defaults are graphql-armor's, which every query fleetql documents fits."""

    # GraphiQL on GET /graphql, and introspection (GraphiQL needs it). With introspection off,
    # "Did you mean …" suggestions are left out of error messages too.
    graphiql: bool = True
    introspection: bool = True
    # A document is refused at parse time past max_tokens, at validation past the others;
    # fragments count each time they are spread, introspection fields are not depth-limited.
    max_tokens: int = Field(default=1000, ge=100)
    max_aliases: int = Field(default=15, ge=0)
    max_depth: int = Field(default=6, ge=2)
    max_directives: int = Field(default=50, ge=0)
    # Batches (a JSON array of operations in one POST) are refused unless enabled.
    batching: bool = False
    max_batch_operations: int = Field(default=10, ge=1, le=100)

    @model_validator(mode="after")
    def _check_graphiql(self) -> GraphQLSettings:
        if self.graphiql and not self.introspection:
            raise ValueError(
                "graphiql: GraphiQL reads the schema by introspection; with introspection off "
                "set graphiql: false as well"
            )
        return self


# Keys that moved into the graphql section (issue 8); the old names are still read.
_MOVED_KEYS = {
    ("server", "graphiql"): ("graphql", "graphiql"),
    ("server", "max_query_tokens"): ("graphql", "max_tokens"),
    ("server", "max_aliases"): ("graphql", "max_aliases"),
    ("server", "max_query_depth"): ("graphql", "max_depth"),
}
# What an import request holds besides the base64 kubeconfig: the JSON around it, the query, a
# description of up to 2,048 characters (up to 6 bytes each when JSON-escaped), labels.
_REQUEST_OVERHEAD_BYTES = 64 * 1024


class DatabaseSettings(_Section):
    url: str | None = None
    embedded_data_dir: Path = Path(".fleetql/pgdata")
    pool_size: int = Field(default=10, ge=1)
    max_overflow: int = Field(default=10, ge=0)
    pool_timeout: Duration = timedelta(seconds=30)
    # Pooled connections older than this are replaced at their next checkout. There is no
    # ping per checkout (a round trip on every request): a read whose connection turns out to
    # be dead is retried once on a new one, and this bounds how stale a connection can get
    # (idle timeouts of firewalls and proxies, memory a long-lived backend accumulates).
    pool_recycle: Duration = timedelta(minutes=30)
    # Behind pgbouncer in transaction mode prepared statements must be off: set this to 0.
    statement_cache_size: int = Field(default=100, ge=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.startswith(("postgres://", "postgresql://")):
            # Accept the form every PostgreSQL host hands out; we always talk through asyncpg.
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a postgresql+asyncpg:// (or postgresql://) URL")
        return value


class KeyRingEntry(_Section):
    """One key of ``encryption.keys``: base64 text or a file, named by ``id`` (default: the
    key's fingerprint, as a lone ``encryption.key`` is)."""

    id: str | None = None
    key: str | None = Field(default=None, repr=False)
    key_file: Path | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is not None and not _KEY_ID.match(value):
            raise ValueError(
                "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> KeyRingEntry:
        if (self.key is None) == (self.key_file is None):
            raise ValueError("give exactly one of key (base64) and key_file")
        return self


class EncryptionSettings(_Section):
    key: str | None = Field(default=None, repr=False)
    key_file: Path | None = None
    # A key ring for rotation; a lone key/key_file joins it. `primary` (a key id) wraps new data
    # keys and is required once the ring holds more than one key.
    keys: tuple[KeyRingEntry, ...] = ()
    primary: str | None = None

    @field_validator("keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        # From the environment (FLEETQL_ENCRYPTION__KEYS) the ring comes as JSON text.
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else ()
            except ValueError:
                raise ValueError(
                    'must be a list of {"id": ..., "key": ...} or {"id": ..., "key_file": ...} '
                    "(JSON in the environment)"
                ) from None
        return value

    @field_validator("keys")
    @classmethod
    def _unique_ids(cls, value: tuple[KeyRingEntry, ...]) -> tuple[KeyRingEntry, ...]:
        named = [entry.id for entry in value if entry.id is not None]
        if duplicates := sorted({name for name in named if named.count(name) > 1}):
            raise ValueError(f"key id {', '.join(duplicates)} is given more than once")
        return value


class PollerSettings(_Section):
    enabled: bool = True
    check_interval: Duration = timedelta(minutes=5)
    client_timeout: Duration = timedelta(seconds=30)
    max_concurrency: int = Field(default=10, ge=1)
    retry_attempts: int = Field(default=3, ge=0)
    retry_delay: Duration = timedelta(seconds=30)
    # A new status is recorded only once this many checks in a row saw it (a first check is
    # recorded at once); until then it shows as pendingStatus and is re-checked retry_delay on.
    status_threshold: int = Field(default=2, ge=1)


class ClusterManagerSettings(_Section):
    max_kubeconfig_bytes: int = Field(default=512 * 1024, ge=1024)
    # Accept kubeconfigs with `insecure-skip-tls-verify: true` (never together with a CA). Off:
    # an unverified connection hands the cluster's credential to whoever answers.
    allow_insecure_tls: bool = False
    # Bounds on every call to a cluster, besides poller.client_timeout on the whole request:
    # TCP connect + TLS handshake, each gap between reads, the decompressed answer.
    connect_timeout: Duration = timedelta(seconds=3)
    read_timeout: Duration = timedelta(seconds=10)
    max_response_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    # A 429 or 503 with Retry-After is waited for, up to this much waiting per check.
    max_retry_after: Duration = timedelta(seconds=10)
    max_page_size: int = Field(default=500, ge=1)
    # The client pool: at most this many cluster clients open, each closed when idle this long.
    max_clients: int = Field(default=100, ge=1)
    cleanup_interval: Duration = timedelta(minutes=10)
    # A credential expiring sooner than this is flagged (CREDENTIAL_EXPIRING, fleetSummary).
    credential_expiry_warning: Duration = timedelta(days=14)
    # Event log entries older than this are pruned in the background.
    event_retention: Duration = timedelta(days=30)
    # More status changes than this in the last hour mark a cluster as flapping.
    flapping_threshold: int = Field(default=6, ge=1)
    # Where clusters may be (README "Outbound addresses (SSRF)"): networks or single addresses
    # allowed or denied beyond the defaults; the longest match decides, a deny wins a tie.
    # Link-local and metadata addresses are refused whatever these say.
    allowed_networks: CommaSeparated = ()
    denied_networks: CommaSeparated = ()

    @field_validator("allowed_networks", "denied_networks")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(parse_network(text)) for text in value)

    @field_validator("allowed_networks")
    @classmethod
    def _check_allowable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            if (why := never_allowed(parse_network(text))) is not None:
                raise ValueError(why)
        return value


class EventsSettings(_Section):
    """How cluster events reach subscribers; see README "Live updates"."""

    # memory:// (one process), postgres:// (LISTEN/NOTIFY on the configured database; give a
    # full postgresql://... URL for another one) or redis://host:6379/0.
    url: str = Field(default="memory://", repr=False)
    # Events held for one subscriber that is not reading; past this its connection is closed.
    # An entry is a reference to an event all subscribers share, so a generous bound is cheap
    # and lets a fast client ride out a burst (a whole fleet changing at once).
    subscriber_queue_size: int = Field(default=4096, ge=1)
    # A websocket must send connection_init within this time or it is closed (4408).
    connection_init_timeout: Duration = timedelta(seconds=3)
    # Server pings on every websocket; a peer that does not answer in ping_timeout is dropped.
    ping_interval: Duration = timedelta(seconds=20)
    ping_timeout: Duration = timedelta(seconds=20)
    # Issue 8 raised this from 50: a console may hold a subscription per panel.
    max_subscriptions_per_connection: int = Field(default=100, ge=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in _EVENT_SCHEMES:
            raise ValueError(
                f"must start with one of {', '.join(s + '://' for s in sorted(_EVENT_SCHEMES))}"
            )
        return value


class LogSettings(_Section):
    """What the process logs and how: readable text by default, JSON lines for a collector."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class MetricsSettings(_Section):
    """``GET /metrics`` (README "Metrics")."""

    enabled: bool = True
    # One series per cluster (ready, nodes, CPU, memory, credential expiry); turn off for
    # fleets too large for that, the fleet-wide totals stay.
    per_cluster_series: bool = True
    # Distinct GraphQL operation names kept as label values; later ones count as "other".
    max_operation_names: int = Field(default=200, ge=0, le=10_000)
    # `fleetql poll` serves its own /metrics here when a port is set (it has no API server).
    poller_host: str = "127.0.0.1"
    poller_port: int | None = Field(default=None, ge=0, le=65_535)


_EVENT_SCHEMES = frozenset(
    {"memory", "postgres", "postgresql", "postgresql+asyncpg", "redis", "rediss"}
)


_HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class RoleBinding(_Section):
    """What a value of the roles claim (a group, say) grants: a role, over a label scope."""

    role: str
    scope: str | None = None

    @field_validator("role")
    @classmethod
    def _check_role(cls, value: str) -> str:
        return Role.parse(value).name.lower()

    @field_validator("scope")
    @classmethod
    def _check_scope(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            try:
                parse_label_selector(value)
            except ValueError as error:
                raise ValueError(f"not a label selector: {error}") from None
            return value
        return None


class AuthSettings(_Section):
    """Who may call the API; see README "Security"."""

    # none: everyone is an admin (only on a loopback address unless allow_unauthenticated);
    # jwt: bearer tokens signed by a configured key; oidc: signed by the issuer's published
    # keys (discovery document and JWKS). API tokens work beside both.
    mode: Literal["none", "jwt", "oidc"] = "none"
    allow_unauthenticated: bool = False
    issuer: str | None = None
    audience: str | None = None
    algorithms: CommaSeparated = ("RS256", "ES256")
    # Exactly one source of verification keys: a PEM public key (inline or a file), a JWKS
    # file (keys picked by `kid`), or a shared secret for HS256/384/512.
    public_key: str | None = Field(default=None, repr=False)
    public_key_file: Path | None = None
    jwks_file: Path | None = None
    secret: str | None = Field(default=None, repr=False)
    leeway: Duration = timedelta(seconds=30)
    # The claim holding the caller's name (the event log's actor) and the one holding its
    # groups or roles; a dotted path reaches into objects (realm_access.roles).
    subject_claim: str = "sub"
    roles_claim: str = "groups"
    # Values of the roles claim -> what they grant: {"platform": {"role": "admin"},
    # "payments": {"role": "operator", "scope": "team=payments"}}.
    roles: dict[str, RoleBinding] = Field(default_factory=dict)
    # How often open websockets are checked for revoked or expired credentials.
    token_check_interval: Duration = timedelta(seconds=2)
    # oidc: how often the issuer's keys are fetched again, and the least time between two
    # fetches prompted by tokens naming an unknown key (so forged kids cannot hammer it).
    jwks_refresh_interval: Duration = timedelta(hours=1)
    jwks_min_refresh_interval: Duration = timedelta(seconds=30)
    discovery_timeout: Duration = timedelta(seconds=5)

    @field_validator("roles", mode="before")
    @classmethod
    def _roles_from_json(cls, value: Any) -> Any:
        # From the environment the bindings come as one JSON object.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as error:
                raise ValueError(f"must be a JSON object of bindings: {error}") from None
        return value

    @model_validator(mode="after")
    def _check_jwt(self) -> AuthSettings:
        for algorithm in self.algorithms:
            if algorithm not in _HMAC_ALGORITHMS | _ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"algorithms: {algorithm!r} is not an accepted JWT algorithm")
        if self.mode == "none":
            return self
        if not self.issuer or not self.audience:
            raise ValueError(f"mode {self.mode} needs both issuer and audience")
        if self.mode == "oidc":
            return self._check_oidc()
        sources = [
            name
            for name in ("public_key", "public_key_file", "jwks_file", "secret")
            if getattr(self, name) is not None
        ]
        if len(sources) != 1:
            raise ValueError(
                "mode jwt needs exactly one of public_key, public_key_file, jwks_file, secret"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if not self.algorithms:
            raise ValueError("algorithms: name at least one")
        if self.secret is not None:
            if set(self.algorithms) - _HMAC_ALGORITHMS:
                raise ValueError("algorithms: a shared secret verifies HS256/HS384/HS512 only")
            if len(self.secret.encode()) < 32:
                raise ValueError("secret: must be at least 32 bytes")
        elif set(self.algorithms) & _HMAC_ALGORITHMS:
            # The classic confusion attack: an HS256 token "signed" with the public key.
            raise ValueError("algorithms: HMAC algorithms are refused with an asymmetric key")
        return self

    def _check_oidc(self) -> AuthSettings:
        assert self.issuer is not None
        configured = [
            name
            for name in ("public_key", "public_key_file", "jwks_file", "secret")
            if getattr(self, name) is not None
        ]
        if configured:
            raise ValueError(
                f"mode oidc takes its keys from the issuer; remove {', '.join(configured)}"
            )
        if set(self.algorithms) & _HMAC_ALGORITHMS:
            raise ValueError("algorithms: an OIDC issuer's published keys are asymmetric")
        parts = urlsplit(self.issuer)
        scheme, host = parts.scheme, parts.hostname or ""
        if scheme != "https" and not (scheme == "http" and is_loopback(host)):
            raise ValueError("issuer: must be an https:// URL (http:// only on loopback)")
        return self


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    graphql: GraphQLSettings = GraphQLSettings()
    database: DatabaseSettings = DatabaseSettings()
    encryption: EncryptionSettings = EncryptionSettings()
    poller: PollerSettings = PollerSettings()
    cluster_manager: ClusterManagerSettings = ClusterManagerSettings()
    events: EventsSettings = EventsSettings()
    auth: AuthSettings = AuthSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()

    @model_validator(mode="before")
    @classmethod
    def _move_old_keys(cls, raw: Any) -> Any:
        """``server.graphiql`` and ``server.max_query_*`` are read as their ``graphql.*`` keys."""
        if not isinstance(raw, dict) or not isinstance(raw.get("server"), dict):
            return raw
        raw = {section: values for section, values in raw.items()}
        server = dict(raw["server"])
        graphql = dict(raw.get("graphql") or {})
        for (old_section, old_key), (new_section, new_key) in _MOVED_KEYS.items():
            if old_key not in server:
                continue
            value = server.pop(old_key)
            if new_key in graphql and graphql[new_key] != value:
                raise ValueError(
                    f"{old_section}.{old_key} (the old name) and {new_section}.{new_key} "
                    "are both set, to different values; keep only the new one"
                )
            graphql[new_key] = value
        raw["server"], raw["graphql"] = server, graphql
        return raw

    @model_validator(mode="after")
    def _check_body_limit(self) -> Settings:
        kubeconfig = self.cluster_manager.max_kubeconfig_bytes
        needed = -(-kubeconfig * 4 // 3) + _REQUEST_OVERHEAD_BYTES  # base64, rounded up
        if self.server.max_body_bytes < needed:
            raise ValueError(
                f"server.max_body_bytes ({self.server.max_body_bytes}) is too small for "
                f"cluster_manager.max_kubeconfig_bytes ({kubeconfig}): an import of the largest "
                f"kubeconfig, base64-encoded in JSON, needs at least {needed}"
            )
        return self

    @model_validator(mode="after")
    def _check_exposure(self) -> Settings:
        if (
            self.auth.mode == "none"
            and not self.auth.allow_unauthenticated
            and not is_loopback(self.server.host)
        ):
            raise ValueError(
                f"auth.mode is none but server.host is {self.server.host}, which is not a "
                "loopback address: anyone who reaches it could administer the fleet. Configure "
                "auth.mode: jwt, or set auth.allow_unauthenticated: true if something in front "
                "of fleetql authenticates every request"
            )
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read the YAML file (if any), apply the environment, then ``overrides`` (CLI flags)."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path)
    for (section, key), value in _environment_values(environ).items():
        raw.setdefault(section, {})[key] = value
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    try:
        return Settings.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    for section, values in loaded.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of keys")
    return {section: dict(values or {}) for section, values in loaded.items()}


def _environment_values(environ: Mapping[str, str]) -> dict[tuple[str, str], str]:
    values: dict[tuple[str, str], str] = {}
    for name, value in environ.items():
        if name in _ALIASES:
            values[_ALIASES[name]] = value
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS or name in _ALIASES:
            continue
        section, sep, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if not sep or not key or "__" in key:
            raise ConfigError(
                f"environment variable {name} is not a setting; "
                f"use {ENV_PREFIX}<SECTION>__<KEY>, e.g. FLEETQL_POLLER__CHECK_INTERVAL"
            )
        values[(section, key)] = value
    return values


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown setting")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {message}" if key else message)
    return "invalid settings: " + "; ".join(lines)
