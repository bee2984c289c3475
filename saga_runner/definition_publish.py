"""A step call that publishes a message to a broker instead of calling a service over HTTP.

``action`` and ``compensation`` may be ``publish: {broker, to, body, headers}``: ``broker`` names
one of the config's ``sagas.brokers``, ``to`` is a RabbitMQ routing key on the default exchange
(a queue name) or a NATS JetStream subject, ``body`` and ``headers`` are templates like an HTTP
call's. The engine publishes one persistent message per attempt with the step call's key as its
message id (``saga_runner.publishing``). ``is_publish`` tells the two kinds of call apart in the
raw document, for the discriminated unions of ``saga_runner.definition``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from pydantic import Field, JsonValue, PrivateAttr, ValidationInfo, field_validator, model_validator

from saga_runner.definition_base import DefinitionModel, HeaderMap, checks_skipped
from saga_runner.retry import COMPENSATION_RETRY, RetryPolicy, merge_retry
from saga_runner.template import (
    CompiledValue,
    RenderContext,
    Template,
    compile_body,
    compile_header,
    steps_referenced,
)

PUBLISH_TAG: Final = "[publish]"
CALL_TAG: Final = "[call]"
"""The union tags of a publish and of an HTTP call (bracketed: error locations leave them out)."""


def call_tag(value: Any) -> str:
    """Which kind of step call ``value`` (a raw mapping or a model) is."""
    if isinstance(value, PublishDefinition) or (isinstance(value, Mapping) and "publish" in value):
        return PUBLISH_TAG
    return CALL_TAG


@dataclass(frozen=True)
class RenderedPublish:
    """A publish with every template rendered, ready for the broker."""

    broker: str
    to: str
    headers: dict[str, str]
    body: Any


class PublishTarget(DefinitionModel):
    """Where the message goes and what it says (the mapping under ``publish``)."""

    broker: str
    """A broker of the config's ``sagas.brokers``."""

    to: str = Field(min_length=1)
    """RabbitMQ: the routing key on the default exchange (a queue); NATS: a JetStream subject.
    A template rendered as text."""

    body: JsonValue = None
    """The JSON payload; strings are templates. Absent (null): an empty message."""

    headers: HeaderMap = Field(default_factory=dict)
    """Extra message headers; values are templates rendered as text."""


class PublishDefinition(DefinitionModel):
    """An ``action`` (or, as ``PublishCompensation``, a ``compensation``) that publishes."""

    DEFAULT_SUCCESS: ClassVar[frozenset[int]] = frozenset()

    publish: PublishTarget
    """The message to publish."""

    _to: Template = PrivateAttr()
    _headers: dict[str, Template] = PrivateAttr()
    _body: CompiledValue = PrivateAttr()

    @model_validator(mode="after")
    def _compile(self, info: ValidationInfo) -> PublishDefinition:
        if not checks_skipped(info):
            target = self.publish
            self._to = compile_header(target.to)
            self._headers = {name: compile_header(v) for name, v in target.headers.items()}
            self._body = compile_body(target.body)
        return self

    @property
    def success_statuses(self) -> frozenset[int]:
        """None: a publish succeeds when the broker took the message, not by a status."""
        return self.DEFAULT_SUCCESS

    def referenced_steps(self) -> frozenset[str]:
        """Names of the steps whose answers this publish's templates look up."""
        return steps_referenced([self._to, *self._headers.values(), self._body])

    def render(self, ctx: RenderContext) -> RenderedPublish:
        """Render the destination, headers and body; raise TemplateError on a failed lookup."""
        return RenderedPublish(
            broker=self.publish.broker,
            to=self._to.render_header(ctx),
            headers={name: t.render_header(ctx) for name, t in self._headers.items()},
            body=self._body.render(ctx),
        )


class PublishCompensation(PublishDefinition):
    """A compensation that publishes: retried until the broker takes it, like any
    compensation (``COMPENSATION_RETRY``)."""

    retry: RetryPolicy = COMPENSATION_RETRY
    """Retry of the publish; keys left out take ``COMPENSATION_RETRY``'s values."""

    @field_validator("retry", mode="before")
    @classmethod
    def _retry_defaults(cls, value: Any) -> Any:
        return merge_retry(value, COMPENSATION_RETRY)
