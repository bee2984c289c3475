"""Saga definitions (``config/sagas/*.yaml``, docs/SAGAS.md) as validated, frozen pydantic models.

``load_definition`` / ``parse_definition`` read one saga file and raise one ``ConfigError`` listing
every problem as ``FILE:LINE: key.path: message``: schema errors (unknown keys, bad methods, status
codes, retry and timeout values) together with whole-document ones from ``definition_checks``
(templates, step references, services). Every template is compiled once at validation time.
This module holds the saga, its steps and its response; a step's calls are
``definition_calls``, its ``await`` is ``definition_awaits``, and the base model and field types
all of them share are ``definition_base``.

A saga's ``steps`` are items: a ``StepDefinition``, or a ``ParallelGroup`` of steps that run
together; ``SagaDefinition.stages`` is what the engine walks and ``all_steps`` numbers every step
(``step_order``) in file order. ``kind: tcc`` makes every step a TCC step (``try``, ``confirm``,
``cancel`` instead of ``action`` and ``compensation``); ``definition_checks`` says which calls a
step of each kind must have.

A definition is pinned to each saga instance by ``definition_hash`` (sha256 of the canonical JSON
of the validated model, defaults included) and stored with ``to_snapshot`` / ``from_snapshot``, so
an instance finishes under the definition it started with. A snapshot names services, not URLs:
the URL is looked up in the current config when a call is made. A plain saga's snapshot leaves
out the keys of the newer shapes (``kind``, ``try``, ``confirm``, ``cancel``), so its hash is what
it was before they existed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    Discriminator,
    Field,
    JsonValue,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from saga_runner.definition_awaits import AwaitDefinition
from saga_runner.definition_base import (
    SKIP_CHECKS,
    DefinitionModel,
    HeaderMap,
    Method,
    Name,
    StatusCode,
    checks_skipped,
    positive_duration,
)
from saga_runner.definition_calls import CallDefinition, CompensationDefinition, ConfirmDefinition
from saga_runner.definition_checks import dotted, find_problems
from saga_runner.definition_publish import (
    CALL_TAG,
    PUBLISH_TAG,
    PublishCompensation,
    PublishDefinition,
    call_tag,
)
from saga_runner.retry import ACTION_RETRY, RetryPolicy, merge_retry
from saga_runner.states import AttemptKind
from saga_runner.template import (
    CompiledValue,
    RenderContext,
    Template,
    compile_body,
    compile_header,
    parse_template,
)
from yamlconfig.errors import ConfigError, KeyValueError
from yamlconfig.loader import LocatedDocument, load_yaml, validation_issues
from yamlconfig.units import Duration

_TRIGGER_PATH_RE = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$")


class Trigger(DefinitionModel):
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


ActionCall = Annotated[
    Annotated[CallDefinition, Tag(CALL_TAG)] | Annotated[PublishDefinition, Tag(PUBLISH_TAG)],
    Discriminator(call_tag),
]
"""A step's action: an HTTP call, or a message published to a broker."""

CompensationCall = Annotated[
    Annotated[CompensationDefinition, Tag(CALL_TAG)]
    | Annotated[PublishCompensation, Tag(PUBLISH_TAG)],
    Discriminator(call_tag),
]
"""A step's compensation: an HTTP call, or a message published to a broker."""

StepCall = CallDefinition | PublishDefinition
"""Any call of a step (a TCC step's calls are always HTTP calls)."""


class StepDefinition(DefinitionModel):
    """One saga step: its calls (an action and optional compensation, or a TCC step's try,
    confirm and cancel), and the forward call's retry and the calls' timeout."""

    name: Name
    """Step name, unique in the saga; templates refer to it as ``steps.NAME``."""

    action: ActionCall | None = None
    """The forward call (required in a saga, absent in a TCC saga)."""

    compensation: CompensationCall | None = None
    """The call that undoes the action; absent: nothing to undo."""

    try_: CallDefinition | None = Field(default=None, alias="try")
    """A TCC step's try: reserves the effect (required in a TCC saga, absent in a saga)."""

    confirm: ConfirmDefinition | None = None
    """A TCC step's confirm: makes the reserved effect final once every try succeeded."""

    cancel: CompensationDefinition | None = None
    """A TCC step's cancel: releases what its try reserved (sent even if the try never came)."""

    retry: RetryPolicy = ACTION_RETRY
    """Retry of the action (or try); keys left out take ``ACTION_RETRY``'s values."""

    timeout: Duration | None = None
    """Per-attempt timeout of every call of the step; absent: the config's ``upstream.timeout``."""

    await_: AwaitDefinition | None = Field(default=None, alias="await")
    """The action only starts the work: the step waits for its outcome (``waiting``)."""

    @field_validator("retry", mode="before")
    @classmethod
    def _retry_defaults(cls, value: Any) -> Any:
        return merge_retry(value, ACTION_RETRY)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float | None) -> float | None:
        return positive_duration(value)

    @model_serializer(mode="wrap")
    def _declared_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The calls a step does not have are left out (``compensation`` excepted, as it always
        # was), so a plain saga's snapshot and hash are what they were before TCC existed.
        data: dict[str, Any] = handler(self)
        for key in ("action", "try", "try_", "confirm", "cancel", "await", "await_"):
            if key in data and data[key] is None:
                del data[key]
        return data

    def call(self, kind: AttemptKind) -> StepCall | None:
        """The call of ``kind`` (``action``, ``compensation``, ``try``, ``confirm``, ``cancel``)."""
        calls: dict[AttemptKind, StepCall | None] = {
            AttemptKind.ACTION: self.action,
            AttemptKind.COMPENSATION: self.compensation,
            AttemptKind.TRY: self.try_,
            AttemptKind.CONFIRM: self.confirm,
            AttemptKind.CANCEL: self.cancel,
        }
        return calls[kind]

    def settling_call(self, kind: AttemptKind) -> ConfirmDefinition | PublishCompensation | None:
        """The retried call ``kind`` that settles the step: its compensation, confirm or cancel."""
        calls: dict[AttemptKind, ConfirmDefinition | PublishCompensation | None] = {
            AttemptKind.COMPENSATION: self.compensation,
            AttemptKind.CONFIRM: self.confirm,
            AttemptKind.CANCEL: self.cancel,
        }
        return calls.get(kind)

    @property
    def awaits(self) -> bool:
        """Whether the step waits for its outcome after its action was accepted."""
        return self.await_ is not None

    @property
    def awaits_callback(self) -> bool:
        """Whether the step's calls carry a callback URL and token (its outcome comes through
        the callback endpoint or a broker's completion messages)."""
        return self.await_ is not None and self.await_.poll is None

    def timeout_or(self, default: float) -> float:
        """This step's timeout in seconds, or ``default`` (``upstream.timeout``) when unset."""
        return default if self.timeout is None else self.timeout


class ParallelGroup(DefinitionModel):
    """Steps that start together once the previous item succeeded; the next item waits for
    all of them. A member may use the results of earlier items only, never a sibling's."""

    parallel: tuple[StepDefinition, ...]
    """The members (at least two)."""

    @field_validator("parallel", mode="before")
    @classmethod
    def _not_nested(cls, value: Any) -> Any:
        for index, member in enumerate(value if isinstance(value, list) else ()):
            if isinstance(member, Mapping) and "parallel" in member:
                raise KeyValueError((index, "parallel"), "parallel groups cannot be nested")
        return value

    @field_validator("parallel")
    @classmethod
    def _members(cls, value: tuple[StepDefinition, ...]) -> tuple[StepDefinition, ...]:
        if len(value) < 2:
            raise ValueError(
                "a parallel group needs at least two steps (write a single step as a plain item)"
            )
        return value


# Tags are bracketed so that error locations leave them out (``yamlconfig.loader.document_loc``).
_STEP_TAG: Final = "[step]"
_GROUP_TAG: Final = "[parallel]"


def _item_tag(value: Any) -> str:
    if isinstance(value, ParallelGroup) or (isinstance(value, Mapping) and "parallel" in value):
        return _GROUP_TAG
    return _STEP_TAG


StepItem = Annotated[
    Annotated[StepDefinition, Tag(_STEP_TAG)] | Annotated[ParallelGroup, Tag(_GROUP_TAG)],
    Discriminator(_item_tag),
]
"""An item of a saga's ``steps``: one step, or a parallel group of steps."""


@dataclass(frozen=True)
class Stage:
    """One item of ``steps`` as the engine runs it: the steps that start together.

    Attributes:
        index: the item's position in ``steps`` (stored as each member's ``stage``).
        orders: the ``step_order`` of each member (steps are numbered in file order, groups
            flattened).
        parallel: whether the item is a parallel group.
    """

    index: int
    orders: tuple[int, ...]
    parallel: bool = False


@dataclass(frozen=True)
class RenderedResponse:
    """The trigger's answer on success, rendered."""

    status: int
    headers: dict[str, str]
    body: Any
    has_body: bool


class ResponseDefinition(DefinitionModel):
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
        if not checks_skipped(info):
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


class SagaDefinition(DefinitionModel):
    """One saga file: its trigger route, steps and success response."""

    name: Name
    """Saga name (``saga_instances.business_type`` and the ``saga`` metrics label)."""

    trigger: Trigger
    """The route that starts the saga."""

    mode: Literal["sync", "async"] = "sync"
    """sync: answer when the saga ends; async: answer 202 at once."""

    business_id: str | None = None
    """Template of the instance's business id (may use ``input``, ``headers``, ``saga.id``)."""

    kind: Literal["saga", "tcc"] = "saga"
    """saga: steps with an action and a compensation; tcc: steps with try, confirm, cancel."""

    steps: tuple[StepItem, ...]
    """The steps (or parallel groups of steps), run in order; undone in reverse order."""

    response: ResponseDefinition = ResponseDefinition()
    """The sync answer on success."""

    deadline: Duration | None = None
    """How long after its start the saga may run forward; then it compensates."""

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: float | None) -> float | None:
        return positive_duration(value)

    @field_validator("steps")
    @classmethod
    def _some_steps(
        cls, value: tuple[StepDefinition | ParallelGroup, ...]
    ) -> tuple[StepDefinition | ParallelGroup, ...]:
        if not value:
            raise ValueError("a saga needs at least one step")
        return value

    _business_id: Template | None = PrivateAttr(default=None)
    _hash: str = PrivateAttr(default="")
    _all_steps: tuple[StepDefinition, ...] = PrivateAttr(default=())
    _stages: tuple[Stage, ...] = PrivateAttr(default=())

    @model_serializer(mode="wrap")
    def _declared_kind(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A plain saga's snapshot (and hash) stays what it was before ``kind`` existed.
        data: dict[str, Any] = handler(self)
        if data.get("kind") == "saga":
            del data["kind"]
        if data.get("deadline") is None:
            data.pop("deadline", None)
        return data

    @model_validator(mode="after")
    def _check_whole(self, info: ValidationInfo) -> SagaDefinition:
        flat: list[StepDefinition] = []
        stages: list[Stage] = []
        for index, item in enumerate(self.steps):
            members = item.parallel if isinstance(item, ParallelGroup) else (item,)
            orders = tuple(range(len(flat), len(flat) + len(members)))
            stages.append(Stage(index, orders, isinstance(item, ParallelGroup)))
            flat.extend(members)
        self._all_steps, self._stages = tuple(flat), tuple(stages)
        if checks_skipped(info):
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

    @property
    def all_steps(self) -> tuple[StepDefinition, ...]:
        """Every step, groups flattened, in file order: index ``n`` is ``step_order`` ``n``."""
        return self._all_steps

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The items of ``steps`` as the engine runs them, in order."""
        return self._stages

    @property
    def forward_kind(self) -> AttemptKind:
        """The forward call of every step: ``action``, or ``try`` in a TCC saga."""
        return AttemptKind.TRY if self.kind == "tcc" else AttemptKind.ACTION

    @property
    def undo_kind(self) -> AttemptKind:
        """The call that undoes a step: ``compensation``, or ``cancel`` in a TCC saga."""
        return AttemptKind.CANCEL if self.kind == "tcc" else AttemptKind.COMPENSATION

    def stage_of(self, order: int) -> Stage:
        """The stage step ``order`` belongs to."""
        return next(stage for stage in self._stages if order in stage.orders)

    def step(self, name: str) -> StepDefinition:
        """The step called ``name``; raise KeyError if there is none."""
        for step in self._all_steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def render_business_id(self, ctx: RenderContext) -> str | None:
        """The instance's business id as text, or None without a ``business_id`` template."""
        return None if self._business_id is None else self._business_id.render_text(ctx)

    def to_snapshot(self) -> dict[str, Any]:
        """A JSON-able dict of the whole definition, defaults included (``from_snapshot``)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> SagaDefinition:
        """Rebuild a pinned definition; raise ConfigError (file ``<snapshot>``) if invalid."""
        return parse_definition(LocatedDocument("<snapshot>", dict(snapshot)), services=None)


def parse_definition(
    doc: LocatedDocument,
    services: Collection[str] | None,
    brokers: Collection[str] | None = None,
) -> SagaDefinition:
    """Validate one parsed saga file.

    Args:
        doc: the file's data with line numbers (``yamlfile.load_yaml``).
        services: the config's service names; None skips the service check.
        brokers: the config's broker names (``sagas.brokers``); None skips the broker check.

    Raises:
        ConfigError: listing every problem of the file as ``FILE:LINE: key.path: message``.
    """
    data = {} if doc.data is None else doc.data
    problems = find_problems(data, services, brokers)
    issues = [doc.issue(loc, f"{dotted(loc)}: {msg}") for loc, msg in problems]
    try:
        definition = SagaDefinition.model_validate(data, context={SKIP_CHECKS: bool(issues)})
    except ValidationError as exc:
        issues += validation_issues(doc, exc, SagaDefinition)
    if issues:
        raise ConfigError(issues)
    return definition


def load_definition(
    path: Path | str,
    services: Collection[str] | None,
    env: Mapping[str, str] | None = None,
    brokers: Collection[str] | None = None,
) -> SagaDefinition:
    """Read, parse and validate one saga file (``${VAR}`` substituted from ``env``).

    Raises:
        ConfigError: listing every problem of the file.
    """
    return parse_definition(load_yaml(path, env), services, brokers)
