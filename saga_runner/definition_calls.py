"""The HTTP calls of a saga step: ``action``, ``compensation``, and a TCC step's ``try``,
``confirm`` and ``cancel``.

A ``CallDefinition`` names a service, not a URL, and holds its path, headers and body as
templates, compiled once at validation time. The engine renders a call with
``CallDefinition.render`` into a ``RenderedCall`` and joins its URL with ``template.build_url``.
A ``ConfirmDefinition`` (a TCC confirm) and a ``CompensationDefinition`` (a compensation or a
TCC cancel) are retried until they succeed; each role has its own default success statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, JsonValue, PrivateAttr, ValidationInfo, field_validator, model_validator
from yarl import URL

from saga_runner.definition_base import (
    DefinitionModel,
    HeaderMap,
    Method,
    StatusCode,
    checks_skipped,
)
from saga_runner.retry import COMPENSATION_RETRY, RetryPolicy, merge_retry
from saga_runner.template import (
    CompiledValue,
    RenderContext,
    Template,
    build_url,
    compile_body,
    compile_header,
    compile_path,
    steps_referenced,
)


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


class CallDefinition(DefinitionModel):
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
        if not checks_skipped(info):
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
        return steps_referenced([self._path, *self._headers.values(), self._body])

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


class ConfirmDefinition(CallDefinition):
    """A TCC step's confirm: retried like a compensation (``COMPENSATION_RETRY``) until it
    succeeds; any 2xx is success by default."""

    retry: RetryPolicy = COMPENSATION_RETRY
    """Retry of the call; keys left out take ``COMPENSATION_RETRY``'s values."""

    @field_validator("retry", mode="before")
    @classmethod
    def _retry_defaults(cls, value: Any) -> Any:
        return merge_retry(value, COMPENSATION_RETRY)


class CompensationDefinition(ConfirmDefinition):
    """The call that undoes a step's action (or cancels a TCC step's try); 404 and 410 also
    count as success by default (the effect is already gone, or never came)."""

    DEFAULT_SUCCESS: ClassVar[frozenset[int]] = frozenset((*range(200, 300), 404, 410))
