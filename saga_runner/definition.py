"""Saga definitions (``config/sagas/*.yaml``, docs/SAGAS.md) as validated, frozen pydantic models.

``load_definition`` / ``parse_definition`` read one saga file and raise one ``ConfigError`` listing
every problem as ``FILE:LINE: key.path: message``: schema errors (unknown keys, bad methods, status
codes, retry and timeout values) together with whole-document ones from ``definition_checks``
(templates, step references, services). Every template is compiled once at validation time; the
engine renders calls with ``CallDefinition.render`` and joins URLs with ``template.build_url``.

A definition is pinned to each saga instance by ``definition_hash`` (sha256 of the canonical JSON
of the validated model, defaults included) and stored with ``to_snapshot`` / ``from_snapshot``, so
an instance finishes under the definition it started with. A snapshot names services, not URLs:
the URL is looked up in the current config when a call is made.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yarl import URL

from saga_runner.definition_checks import dotted, find_problems
from saga_runner.retry import ACTION_RETRY, COMPENSATION_RETRY, RetryPolicy, merge_retry
from saga_runner.template import (
    CompiledValue,
    RenderContext,
    Template,
    build_url,
    compile_body,
    compile_header,
    compile_path,
    parse_template,
)
from yamlconfig.errors import ConfigError, KeyValueError
from yamlconfig.loader import LocatedDocument, load_yaml, validation_issues
from yamlconfig.units import Duration

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""HTTP methods a trigger or a step call may use."""

SIDECAR_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "idempotency-key",
        "keep-alive",
        "proxy-connection",
        "saga-id",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Header names a saga file may not set: hop-by-hop, framing, or set by the sidecar itself."""

_SKIP_CHECKS = "saga_runner.definition.skip_template_checks"
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TRIGGER_PATH_RE = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$")


def _method(value: str) -> str:
    upper = value.upper()
    if upper not in METHODS:
        raise ValueError(f"unsupported HTTP method {value!r} (use one of {', '.join(METHODS)})")
    return upper


def _status(value: int) -> int:
    if not 100 <= value <= 599:
        raise ValueError(f"HTTP status must be between 100 and 599, got {value}")
    return value


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (a letter, then letters, digits, '_' or '-'; max 64)"
        )
    return value


def _positive_duration(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError("must be greater than 0")
    return value


Method = Annotated[str, AfterValidator(_method)]
StatusCode = Annotated[int, Strict(), AfterValidator(_status)]
Name = Annotated[str, AfterValidator(_name)]


def _checks_skipped(info: ValidationInfo) -> bool:
    return isinstance(info.context, Mapping) and bool(info.context.get(_SKIP_CHECKS))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    def __eq__(self, other: object) -> bool:
        # By declared values only: compiled templates keep the key order a file was written in.
        if type(other) is not type(self):
            return NotImplemented
        return self.model_dump() == other.model_dump()


def _header_names(value: dict[str, str]) -> dict[str, str]:
    seen: set[str] = set()
    for name in value:
        lower = name.lower()
        if not _TOKEN_RE.match(name):
            raise KeyValueError((name,), f"{name!r} is not a valid header name")
        if lower in SIDECAR_HEADERS:
            raise KeyValueError((name,), f"header {name!r} cannot be set in a saga file")
        if lower in seen:
            raise KeyValueError((name,), f"header {name!r} is given twice")
        seen.add(lower)
    return value


HeaderMap = Annotated[dict[str, str], AfterValidator(_header_names)]


class Trigger(_Model):
    """The inbound route that starts the saga instead of being forwarded to the app."""

    method: Method
    """HTTP method of the trigger route (upper-cased)."""

    path: str
    """Exact request path of the trigger route (no templates, query or fragment)."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not _TRIGGER_PATH_RE.match(value) or "//" in value:
            raise ValueError(f"must be a plain absolute path like /api/v1/payments, got {value!r}")
        if any(segment in (".", "..") for segment in value.split("/")):
            raise ValueError(f"must not contain '.' or '..' segments, got {value!r}")
        return value


@dataclass(frozen=True)
class RenderedCall:
    """A step call with every template rendered, ready for the HTTP caller."""

    service: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    has_body: bool

    def url(self, base_url: str) -> URL:
        """The call's URL on ``base_url`` (see ``template.build_url``; raises TemplateError)."""
        return build_url(base_url, self.path)


class CallDefinition(_Model):
    """One HTTP call of a step: the action (``CompensationDefinition``: the compensation)."""

    DEFAULT_SUCCESS: ClassVar[frozenset[int]] = frozenset(range(200, 300))

    service: str
    """Name of the service called: a key of the config's ``services``."""

    method: Method
    """HTTP method (upper-cased)."""

    path: str
    """Path on the service, starting with ``/``; lookups are encoded as single segments."""

    headers: HeaderMap = Field(default_factory=dict)
    """Extra request headers; values are templates rendered as text."""

    body: JsonValue = None
    """JSON request body; strings are templates. Absent (null): the call has no body."""

    success: tuple[StatusCode, ...] | None = None
    """Statuses that count as success; absent: the role's default (``DEFAULT_SUCCESS``)."""

    _path: Template = PrivateAttr()
    _headers: dict[str, Template] = PrivateAttr()
    _body: CompiledValue = PrivateAttr()

    @field_validator("success")
    @classmethod
    def _some_success(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and not value:
            raise ValueError("must list at least one status (leave it out for the default)")
        return value

    @model_validator(mode="after")
    def _compile(self, info: ValidationInfo) -> CallDefinition:
        if not _checks_skipped(info):
            self._path = compile_path(self.path)
            self._headers = {name: compile_header(v) for name, v in self.headers.items()}
            self._body = compile_body(self.body)
        return self

    @property
    def success_statuses(self) -> frozenset[int]:
        """The statuses that mean the call succeeded: ``success``, else the role's default."""
        return self.DEFAULT_SUCCESS if self.success is None else frozenset(self.success)

    def referenced_steps(self) -> frozenset[str]:
        """Names of the steps whose answers this call's templates look up."""
        compiled: list[CompiledValue] = [self._path, *self._headers.values(), self._body]
        return frozenset(
            ref.step
            for value in compiled
            for _loc, template in value.templates()
            for ref in template.references
            if ref.step is not None
        )

    def render(self, ctx: RenderContext) -> RenderedCall:
        """Render path, headers and body; raise TemplateError on a failed lookup."""
        return RenderedCall(
            service=self.service,
            method=self.method,
            path=self._path.render_path(ctx),
            headers={name: t.render_header(ctx) for name, t in self._headers.items()},
            body=self._body.render(ctx),
            has_body=self.body is not None,
        )


class CompensationDefinition(CallDefinition):
    """The call that undoes a step's action; 404 and 410 also count as success by default."""

    DEFAULT_SUCCESS: ClassVar[frozenset[int]] = frozenset((*range(200, 300), 404, 410))

    retry: RetryPolicy = COMPENSATION_RETRY
    """Retry of the compensation; keys left out take ``COMPENSATION_RETRY``'s values."""

    @field_validator("retry", mode="before")
    @classmethod
    def _retry_defaults(cls, value: Any) -> Any:
        return merge_retry(value, COMPENSATION_RETRY)


class StepDefinition(_Model):
    """One saga step: an action, its optional compensation, and the action's retry and timeout."""

    name: Name
    """Step name, unique in the saga; templates refer to it as ``steps.NAME``."""

    action: CallDefinition
    """The forward call."""

    compensation: CompensationDefinition | None = None
    """The call that undoes the action; absent: nothing to undo."""

    retry: RetryPolicy = ACTION_RETRY
    """Retry of the action; keys left out take ``ACTION_RETRY``'s values."""

    timeout: Duration | None = None
    """Per-attempt timeout of both calls; absent: the config's ``upstream.timeout``."""

    @field_validator("retry", mode="before")
    @classmethod
    def _retry_defaults(cls, value: Any) -> Any:
        return merge_retry(value, ACTION_RETRY)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float | None) -> float | None:
        return _positive_duration(value)

    def timeout_or(self, default: float) -> float:
        """This step's timeout in seconds, or ``default`` (``upstream.timeout``) when unset."""
        return default if self.timeout is None else self.timeout


@dataclass(frozen=True)
class RenderedResponse:
    """The trigger's answer on success, rendered."""

    status: int
    headers: dict[str, str]
    body: Any
    has_body: bool


class ResponseDefinition(_Model):
    """What a sync trigger answers when the saga completes."""

    status: StatusCode = 200
    """HTTP status of the answer."""

    body: JsonValue = None
    """JSON body; strings are templates over every step. Absent (null): no body."""

    headers: HeaderMap = Field(default_factory=dict)
    """Extra response headers; values are templates rendered as text."""

    _headers: dict[str, Template] = PrivateAttr()
    _body: CompiledValue = PrivateAttr()

    @model_validator(mode="after")
    def _compile(self, info: ValidationInfo) -> ResponseDefinition:
        if not _checks_skipped(info):
            self._headers = {name: compile_header(v) for name, v in self.headers.items()}
            self._body = compile_body(self.body)
        return self

    def render(self, ctx: RenderContext) -> RenderedResponse:
        """Render headers and body; raise TemplateError on a failed lookup."""
        return RenderedResponse(
            status=self.status,
            headers={name: t.render_header(ctx) for name, t in self._headers.items()},
            body=self._body.render(ctx),
            has_body=self.body is not None,
        )


class SagaDefinition(_Model):
    """One saga file: its trigger route, steps and success response."""

    name: Name
    """Saga name (``saga_instances.business_type`` and the ``saga`` metrics label)."""

    trigger: Trigger
    """The route that starts the saga."""

    mode: Literal["sync", "async"] = "sync"
    """sync: answer when the saga ends; async: answer 202 at once."""

    business_id: str | None = None
    """Template of the instance's business id (may use ``input``, ``headers``, ``saga.id``)."""

    steps: tuple[StepDefinition, ...]
    """The steps, run in order; compensated in reverse order."""

    response: ResponseDefinition = ResponseDefinition()
    """The sync answer on success."""

    @field_validator("steps")
    @classmethod
    def _some_steps(cls, value: tuple[StepDefinition, ...]) -> tuple[StepDefinition, ...]:
        if not value:
            raise ValueError("a saga needs at least one step")
        return value

    _business_id: Template | None = PrivateAttr(default=None)
    _hash: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _check_whole(self, info: ValidationInfo) -> SagaDefinition:
        if _checks_skipped(info):
            return self
        problems = find_problems(self.to_snapshot(), services=None)
        if problems:
            raise ValueError("; ".join(f"{dotted(loc)}: {message}" for loc, message in problems))
        if self.business_id is not None:
            self._business_id = parse_template(self.business_id)
        canonical = json.dumps(
            self.to_snapshot(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        self._hash = hashlib.sha256(canonical.encode()).hexdigest()
        return self

    def __hash__(self) -> int:
        return hash(self._hash)

    @property
    def definition_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of this definition, defaults included."""
        return self._hash

    def step(self, name: str) -> StepDefinition:
        """The step called ``name``; raise KeyError if there is none."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def render_business_id(self, ctx: RenderContext) -> str | None:
        """The instance's business id as text, or None without a ``business_id`` template."""
        return None if self._business_id is None else self._business_id.render_text(ctx)

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able dict of the whole definition, defaults included (``from_snapshot``)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> SagaDefinition:
        """Rebuild a pinned definition; raise ConfigError (file ``<snapshot>``) if invalid."""
        return parse_definition(LocatedDocument("<snapshot>", dict(snapshot)), services=None)


def parse_definition(doc: LocatedDocument, services: Collection[str] | None) -> SagaDefinition:
    """Validate one parsed saga file.

    Args:
        doc: the file's data with line numbers (``yamlfile.load_yaml``).
        services: the config's service names; None skips the service check.

    Raises:
        ConfigError: listing every problem of the file as ``FILE:LINE: key.path: message``.
    """
    data = {} if doc.data is None else doc.data
    issues = [doc.issue(loc, f"{dotted(loc)}: {msg}") for loc, msg in find_problems(data, services)]
    try:
        definition = SagaDefinition.model_validate(data, context={_SKIP_CHECKS: bool(issues)})
    except ValidationError as exc:
        issues += validation_issues(doc, exc, SagaDefinition)
    if issues:
        raise ConfigError(issues)
    return definition


def load_definition(
    path: Path | str, services: Collection[str] | None, env: Mapping[str, str] | None = None
) -> SagaDefinition:
    """Read, parse and validate one saga file (``${VAR}`` substituted from ``env``).

    Raises:
        ConfigError: listing every problem of the file.
    """
    return parse_definition(load_yaml(path, env), services)
