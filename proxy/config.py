"""The sidecar config file (``config/sidecar.yaml``) as validated, frozen pydantic models.

``load_config`` reads the file, substitutes ``${VAR}`` references, validates every section and
raises one ``ConfigError`` listing each problem as ``FILE:LINE: key.path: message``.
Saga definition files named by ``sagas.definitions`` are validated by ``saga_runner``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from proxy.metrics import CALLBACK_VIA_HTTP
from saga_runner.brokers.urls import broker_kind
from saga_runner.seal import decode_key
from yamlconfig.errors import ConfigIssue, KeyValueError
from yamlconfig.loader import LocatedDocument, load_yaml, validate
from yamlconfig.units import ByteSize, Duration

_HOSTPORT_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]]*):(?P<port>\d{1,5})$")
_HOST_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class Model(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def split_hostport(value: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 hosts in brackets) into host and port."""
    match = _HOSTPORT_RE.match(value)
    if not match or not 0 <= int(match.group("port")) <= 65535:
        raise ValueError(f"expected host:port like 0.0.0.0:8080, got {value!r}")
    host = match.group("host").strip("[]") or "0.0.0.0"
    return host, int(match.group("port"))


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _http_method(value: str) -> str:
    upper = value.upper()
    if not _TOKEN_RE.match(upper):
        raise ValueError(f"not a valid HTTP method: {upper!r}")
    return upper


_PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$")


def reserved_path(value: str) -> str:
    """A path the sidecar serves itself: absolute, plain segments (letters, digits, ``._~-``,
    no dot segments), no trailing slash, no query, no route or glob syntax."""
    segments = value.split("/")
    if segments[0] or len(segments) < 2 or not all(map(_PATH_SEGMENT_RE.match, segments[1:])):
        raise ValueError(
            f"expected an absolute path of plain segments without a trailing slash, like "
            f"/_saga/sagas, got {value!r}"
        )
    return value


def reserved_routes(*paths: str) -> tuple[tuple[str, str], ...]:
    """The (method, path pattern) pairs of the public listener no saga trigger may take: each
    of the sidecar's own paths (the status path, the callbacks path) and everything under it
    (``*`` any method; ``fnmatch`` patterns)."""
    return tuple(route for path in paths for route in (("*", path), ("*", path + "/*")))


HttpUrl = Annotated[str, AfterValidator(_http_url)]
"""An ``http://`` or ``https://`` URL, stored without a trailing slash."""

HttpMethod = Annotated[str, AfterValidator(_http_method)]
"""An HTTP method name, stored upper-case."""


class Limits(Model):
    """Limits the public listener enforces on every request (413 / 431 / 408), and how long a
    client may take nothing of an answer before it is dropped (``write_timeout``)."""

    max_request_body: ByteSize = 100 * 1024**2
    max_header_size: ByteSize = 16 * 1024
    read_timeout: Duration = 60.0
    write_timeout: Duration = 60.0

    @field_validator("write_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only ever reaches this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


class AdminConfig(Model):
    """The admin listener: probes, metrics, saga API and dashboard.

    The saga API can retry and abort sagas, so a listener reachable from other machines needs a
    ``token``; ``allow_public_without_token: true`` is the explicit opt-out (a trusted network).
    Without a token only loopback names, addresses and ``allowed_hosts`` are served as ``Host``
    (``proxy.admin.guard``).
    """

    listen: str = "127.0.0.1:9901"
    token: str = ""
    allow_public_without_token: bool = False
    # Host names (besides loopback names and addresses) served without a token.
    allowed_hosts: tuple[str, ...] = ()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_hostport(value)
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(name.strip().lower().rstrip(".") for name in value)
        for name in names:
            if not _HOST_NAME_RE.match(name):
                raise ValueError(f"expected a host name without port or scheme, got {name!r}")
        return names

    @model_validator(mode="after")
    def _public_needs_token(self) -> AdminConfig:
        host, _ = split_hostport(self.listen)
        if not (self.token or self.allow_public_without_token or is_loopback(host)):
            raise KeyValueError(
                ("listen",),
                f"listen {self.listen!r} is not a loopback address, so the admin API would be "
                "open to the network: set admin.token (or admin.allow_public_without_token: "
                "true on a trusted network), or listen on 127.0.0.1",
            )
        return self


class UpstreamConfig(Model):
    """The app this sidecar fronts, and the pool of keep-alive connections to it."""

    url: str
    timeout: Duration = 30.0
    keepalive: Duration = 4.0
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_client: int = Field(default=500, ge=0)
    pool_timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("keepalive", "pool_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


UnknownOutcome = Literal["hold", "release"]


class IdempotencyRoute(Model):
    """A per-path override of idempotency settings; ``path`` may end in or contain ``*``.

    Matched in ``proxy.paths.route_key`` form: dot segments resolved, percent-decoded,
    ``;params``, empty segments and a trailing slash ignored, in any case.
    """

    path: str
    enabled: bool = True
    require_key: bool | None = None
    ttl: Duration | None = None
    unknown_outcome: UnknownOutcome | None = None
    concurrent: Literal["reject", "wait"] | None = None


class IdempotencyConfig(Model):
    """Idempotency-Key protection (docs/IDEMPOTENCY.md)."""

    store: str = "memory://"
    header: str = "Idempotency-Key"
    methods: tuple[HttpMethod, ...] = ("POST", "PUT", "PATCH")
    ttl: Duration = 86400.0
    lock_timeout: Duration = 60.0
    require_key: bool = False
    scope_headers: tuple[str, ...] = ("Authorization", "Cookie")
    concurrent: Literal["reject", "wait"] = "reject"
    on_store_error: Literal["reject", "pass"] = "reject"
    unknown_outcome: UnknownOutcome = "hold"
    key_secret: str = ""
    max_body: ByteSize = 1024**2
    max_request_body: ByteSize = 10 * 1024**2
    max_stored_bytes_per_scope: ByteSize = 64 * 1024**2
    routes: tuple[IdempotencyRoute, ...] = ()

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster"):
            raise ValueError(f"expected memory:// or a redis:// URL, got {value!r}")
        return value

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _TOKEN_RE.match(value):
            raise ValueError(f"not a valid header name: {value!r}")
        return value

    @field_validator("ttl", "lock_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


_BROKER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _broker_name(value: str) -> str:
    if not _BROKER_NAME_RE.match(value):
        raise ValueError(
            f"broker name {value!r}: letters, digits, '_', '.' or '-', at most 64, "
            "starting with a letter or digit"
        )
    if value == CALLBACK_VIA_HTTP:
        raise ValueError(
            f"broker name {value!r} is reserved (saga_callbacks_total{{via}} of HTTP callbacks)"
        )
    return value


BrokerName = Annotated[str, AfterValidator(_broker_name)]
"""The name of a broker in ``sagas.brokers`` (what ``publish.broker`` refers to)."""


class BrokerConfig(Model):
    """A message broker saga steps publish to and whose ``callbacks`` carry completions.

    ``url`` names the kind: ``amqp://``/``amqps://`` RabbitMQ, ``nats://``/``tls://`` NATS
    JetStream (``saga_runner.brokers.urls``). ``callbacks`` is the RabbitMQ queue or the NATS
    subject completion messages arrive on.
    """

    # The pattern is for editors (the JSON Schema); the validator says what is wrong.
    url: str = Field(json_schema_extra={"pattern": "^(amqps?|nats|tls)://"})
    callbacks: str

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        broker_kind(value)
        return value

    @field_validator("callbacks")
    @classmethod
    def _callbacks(cls, value: str) -> str:
        if not value or value != value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"expected a queue or subject name without spaces, got {value!r}")
        if len(value.encode()) > 255:
            raise ValueError("a queue or subject name is at most 255 bytes")
        return value

    @model_validator(mode="after")
    def _nats_subject(self) -> BrokerConfig:
        if broker_kind(self.url) == "nats" and (
            self.callbacks.startswith(".") or self.callbacks.endswith(".") or ".." in self.callbacks
        ):
            raise KeyValueError(
                ("callbacks",),
                f"{self.callbacks!r} is not a NATS subject (dot-separated non-empty tokens)",
            )
        return self


class CallbacksConfig(Model):
    """Where services complete the steps that await a callback (``sagas.callbacks``)."""

    # How services reach any replica's public listener; empty: this one's ``listen`` address
    # (0.0.0.0 read as 127.0.0.1), which only a service on the same host can reach.
    url: HttpUrl | None = None
    # ``POST <url><path>/<token>`` completes a step; reserved on the public listener.
    path: str = "/_saga/callbacks"

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return reserved_path(value)


class SagasConfig(Model):
    """The saga runner: where instances are recorded and which definition files to load."""

    store: str = "sqlite:///sagas.db"
    definitions: tuple[str, ...] = ("sagas/*.yaml",)
    migrate: bool = True
    recovery_interval: Duration = 5.0
    lease: Duration = 15.0
    retention: Duration = 30 * 86400.0
    max_input: ByteSize = 256 * 1024
    # base64 32-byte AES-256-GCM keys sealing the redacted trigger values of each saga, so a
    # resumed saga renders from the real input; the first encrypts, all decrypt.
    encryption_keys: tuple[str, ...] = ()
    # Where clients of async sagas read a saga's outcome: ``GET <status_path>/<saga id>`` on
    # the public listener (``proxy.sagas.status``); reserved there, never forwarded to the app.
    status_path: str = "/_saga/sagas"
    # Named brokers for ``publish:`` steps and ``await.message`` (docs/SAGAS.md, Brokers).
    brokers: dict[BrokerName, BrokerConfig] = Field(default_factory=dict)
    # Where services complete the steps that await a callback (docs/SAGAS.md).
    callbacks: CallbacksConfig = CallbacksConfig()

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("postgresql", "postgres", "sqlite"):
            raise ValueError(f"expected a postgresql:// or sqlite:/// URL, got {value!r}")
        return value

    @field_validator("status_path")
    @classmethod
    def _status_path(cls, value: str) -> str:
        return reserved_path(value)

    @model_validator(mode="after")
    def _apart(self) -> SagasConfig:
        status, callbacks = self.status_path, self.callbacks.path
        if (
            status == callbacks
            or (status + "/").startswith(callbacks + "/")
            or (callbacks + "/").startswith(status + "/")
        ):
            raise ValueError("status_path and callbacks.path must not contain one another")
        return self

    @field_validator("encryption_keys")
    @classmethod
    def _encryption_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            decode_key(key)
        return value


class LogConfig(Model):
    """Structured logging."""

    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class RedactConfig(Model):
    """Header and body field names that are never logged, stored in saga records or shown."""

    headers: tuple[str, ...] = ("Authorization", "Cookie", "Set-Cookie", "X-Api-Key")
    fields: tuple[str, ...] = ("card_number", "cvv", "password")


class ReloadConfig(Model):
    """Hot reload (docs/OPERATIONS.md, Reloading): SIGHUP always reloads; ``watch`` also reloads
    when the config file or a saga file changes, looked for every ``interval``."""

    watch: bool = False
    interval: Duration = Field(default=2.0, gt=0)


class TracingConfig(Model):
    """OpenTelemetry traces, exported over OTLP/HTTP (protobuf); off while ``endpoint`` is empty.

    ``endpoint`` is the collector's base URL (spans go to ``/v1/traces`` under it) or, when it
    has a path, the full URL spans are posted to.
    """

    endpoint: str = ""
    service_name: str = "saga-sidecar"
    # The share of new traces recorded; a request whose traceparent says sampled (or not) is
    # recorded (or not) as its caller decided.
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # Sent with every export (a collector's API key, say).
    headers: dict[str, str] = Field(default_factory=dict)
    # How long one export (all its retries) may take; shutdown waits for it at most this long.
    timeout: Duration = Field(default=10.0, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _http_url(value) if value else value

    @field_validator("service_name")
    @classmethod
    def _service_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _TOKEN_RE.match(name):
                raise ValueError(f"not a valid header name: {name!r}")
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
                raise ValueError(f"the value of {name} holds a control character")
        return value


class SidecarConfig(Model):
    """The whole sidecar config file. Only ``upstream.url`` is required."""

    listen: str = "0.0.0.0:8080"
    shutdown_grace: Duration = 30.0
    # false: the client's X-Forwarded-*, X-Real-IP and Forwarded are dropped and the sidecar
    # sets its own; true (behind a proxy that sets them): they are kept and appended to.
    trust_forwarded: bool = False
    limits: Limits = Limits()
    admin: AdminConfig = AdminConfig()
    upstream: UpstreamConfig
    services: dict[str, HttpUrl] = Field(default_factory=dict)
    idempotency: IdempotencyConfig = IdempotencyConfig()
    # Declared after ``idempotency``: its validator checks the store is shared between workers.
    workers: int | Literal["auto"] = Field(default=1)
    sagas: SagasConfig | None = None
    log: LogConfig = LogConfig()
    redact: RedactConfig = RedactConfig()
    reload: ReloadConfig = ReloadConfig()
    tracing: TracingConfig = TracingConfig()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        split_hostport(value)
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected a number of processes or 'auto', got {value!r}")
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError(f"expected a number of processes or 'auto', got {value!r}")
        if int(value) < 1:
            raise ValueError(f"must be 1 or more, or 'auto', got {value!r}")
        return int(value)

    @field_validator("workers")
    @classmethod
    def _memory_store_single_worker(
        cls, value: int | Literal["auto"], info: ValidationInfo
    ) -> int | Literal["auto"]:
        idempotency = info.data.get("idempotency")
        memory = isinstance(idempotency, IdempotencyConfig) and idempotency.store.startswith(
            "memory:"
        )
        if memory and _worker_count(value) > 1:
            raise ValueError(
                "more than one worker needs a shared idempotency store (redis://), not memory://"
            )
        return value

    def callback_url(self) -> str:
        """The callback URL of awaiting steps without its token: ``sagas.callbacks.url`` (or
        this listener's own address) followed by ``sagas.callbacks.path``."""
        callbacks = CallbacksConfig() if self.sagas is None else self.sagas.callbacks
        base = callbacks.url
        if base is None:
            host, port = split_hostport(self.listen)
            host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        return base + callbacks.path

    def worker_count(self) -> int:
        """The number of worker processes (``auto``: the CPU count)."""
        return _worker_count(self.workers)


def _worker_count(workers: int | str) -> int:
    if workers == "auto":
        return os.cpu_count() or 1
    return int(workers)


class LoadedConfig(Model):
    """A validated config together with where it was read from (the file and its lines)."""

    path: Path
    config: SidecarConfig
    lines: dict[tuple[str | int, ...], int] = Field(default_factory=dict, repr=False)

    def issue(self, loc: Sequence[str | int], message: str) -> ConfigIssue:
        """A problem of the setting at ``loc``, located at its line in the config file."""
        return LocatedDocument(str(self.path), None, self.lines).issue(loc, message)

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the config (saga globs, sqlite files) resolve against."""
        return self.path.parent


class LiveConfig:
    """The config in effect, which a reload (``proxy.reload``) replaces as a whole.

    The apps hold one under ``proxy.keys.CONFIG``; code that reads a reloadable setting reads
    ``.config`` when it needs the value, and never keeps the section it got.
    """

    __slots__ = ("loaded",)

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded

    @property
    def config(self) -> SidecarConfig:
        """The settings in effect now."""
        return self.loaded.config

    @property
    def path(self) -> Path:
        """The config file (absolute)."""
        return self.loaded.path


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load and validate a sidecar config file.

    Raises:
        ConfigError: listing every problem as ``FILE:LINE: message``.
    """
    doc: LocatedDocument = load_yaml(path, env, defer_issues=True)
    config = validate(doc, SidecarConfig)
    return LoadedConfig(path=Path(path).resolve(), config=config, lines=doc.lines)
