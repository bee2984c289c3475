"""How a step whose action only starts its work learns its outcome (``await``).

An ``AwaitDefinition`` declares one of ``AWAIT_KINDS``: a ``CallbackAwait`` (the outcome comes
to the callback URL every call of the step carries) or a ``PollAwait`` (the service is polled
until an answer matches ``success`` or ``failure``, each a ``FieldMatch`` on the answer's
status, body or headers) or a ``MessageAwait`` (the outcome comes as a completion message on a
broker's ``callbacks`` queue or subject, carrying the token the step's call or published message
carried; the callback URL works for it too). ``definition_checks``
says which awaits a step may have; ``saga_runner.waits`` and ``saga_runner.polls`` run them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import (
    Field,
    JsonValue,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from saga_runner.definition_base import (
    DefinitionModel,
    HeaderMap,
    Method,
    checks_skipped,
    positive_duration,
)
from saga_runner.definition_calls import RenderedCall
from saga_runner.template import RenderContext, Template, compile_header, compile_path
from yamlconfig.units import Duration


class CallbackAwait(DefinitionModel):
    """An await completed through the callback URL the step's calls carry."""

    timeout: Duration | None = None
    """How long to wait for the outcome after the action was accepted (required; a heartbeat
    starts it again)."""

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float | None) -> float | None:
        return positive_duration(value)


class MessageAwait(CallbackAwait):
    """An await completed by a message on a broker's ``callbacks`` queue or subject (header
    ``saga-callback-token``), or, with the same token, through the callback URL."""


_FIELD_ROOTS: Final = ("status", "body", "headers")


class FieldMatch(DefinitionModel):
    """A poll answer's field and the values that make it match (``success``/``failure``)."""

    field: str
    """``status``, ``body`` or ``body.a.b`` (a lookup in the JSON body), or ``headers.NAME``."""

    in_: tuple[JsonValue, ...] = Field(alias="in")
    """The values that match (compared as JSON values: ``201`` is not ``"201"``)."""

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        root, _, rest = value.partition(".")
        if root not in _FIELD_ROOTS:
            raise ValueError(f"must start with status, body or headers, got {value!r}")
        if root == "status" and rest:
            raise ValueError("status has no members")
        if root == "headers" and (not rest or "." in rest):
            raise ValueError("name one header: headers.NAME")
        if rest and "" in rest.split("."):
            raise ValueError(f"empty segment in {value!r}")
        return value

    @field_validator("in_")
    @classmethod
    def _some(cls, value: tuple[JsonValue, ...]) -> tuple[JsonValue, ...]:
        if not value:
            raise ValueError("must list at least one value")
        return value

    def matches(self, status: int | None, headers: Mapping[str, str], body: Any) -> bool:
        """Whether the answer's field holds one of the values (a missing field never does)."""
        root, _, rest = self.field.partition(".")
        found: Any = status
        if root == "headers":
            found = {k.lower(): v for k, v in headers.items()}.get(rest.lower(), _MISSING)
        elif root == "body":
            found = body
            for segment in rest.split(".") if rest else ():
                found = _member(found, segment)
        return found is not _MISSING and any(
            found == value and type(found) is type(value) for value in self.in_
        )


_MISSING: Final = object()


def _member(value: Any, segment: str) -> Any:
    if isinstance(value, dict):
        return value.get(segment, _MISSING)
    if isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
        return value[int(segment)]
    return _MISSING


class PollAwait(DefinitionModel):
    """An await completed by polling: ``GET`` (or ``method``) ``path`` every ``every`` until an
    answer matches ``success`` or ``failure`` or ``timeout`` passes; no ``Idempotency-Key``."""

    service: str | None = None
    """The service polled; absent: the action's."""

    method: Method = "GET"
    """HTTP method of the polls."""

    path: str
    """Path polled; a template that may use the step's own answer (``steps.NAME``)."""

    headers: HeaderMap = Field(default_factory=dict)
    """Extra request headers; values are templates rendered as text."""

    every: Duration = 5.0
    """How long between polls (at the recovery pass after it: see docs/SAGAS.md)."""

    timeout: Duration | None = None
    """How long to poll after the action was accepted (required)."""

    success: FieldMatch | None = None
    """The answer that completes the step (required); its body becomes ``steps.NAME.body``."""

    failure: FieldMatch | None = None
    """The answer that fails the step (optional)."""

    _path: Template = PrivateAttr()
    _headers: dict[str, Template] = PrivateAttr()

    @field_validator("every", "timeout")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        return positive_duration(value)

    @model_validator(mode="after")
    def _compile(self, info: ValidationInfo) -> PollAwait:
        if not checks_skipped(info):
            self._path = compile_path(self.path)
            self._headers = {name: compile_header(v) for name, v in self.headers.items()}
        return self

    def render(self, ctx: RenderContext, action_service: str) -> RenderedCall:
        """The poll's call, rendered (no body); raise TemplateError on a failed lookup."""
        return RenderedCall(
            service=self.service or action_service,
            method=self.method,
            path=self._path.render_path(ctx),
            headers={name: t.render_header(ctx) for name, t in self._headers.items()},
            body=None,
            has_body=False,
        )


AWAIT_KINDS: Final = ("callback", "poll", "message")
"""The ways a step may await its outcome (exactly one)."""


class AwaitDefinition(DefinitionModel):
    """How a step whose action only starts its work learns the outcome (``await``)."""

    callback: CallbackAwait | None = None
    """Completed through the callback URL (``Saga-Callback`` header of every call)."""

    poll: PollAwait | None = None
    """Completed by polling the service until a terminal answer."""

    message: MessageAwait | None = None
    """Completed by a completion message on a broker (or through the callback URL)."""

    @model_serializer(mode="wrap")
    def _declared(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}

    @property
    def kind(self) -> str:
        """Which await this is (``callback``)."""
        return next((k for k in AWAIT_KINDS if getattr(self, k) is not None), "callback")

    @property
    def timeout(self) -> float:
        """How long to wait for the outcome, in seconds."""
        declared = self.callback or self.poll or self.message
        timeout = None if declared is None else declared.timeout
        if timeout is None:
            raise ValueError("only an await with a timeout can be run")
        return timeout
