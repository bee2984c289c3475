"""Exceptions raised by saga_runner (a bad YAML file is ``yamlconfig.ConfigError``).

Exception tree::

    SagaError                      root of everything this package raises on purpose
    ├── TemplateError              a step call that cannot be rendered at run time; ``root``: whose
    │                              value was at fault (``TemplateRoot``, None: no value's)
    ├── StoreError                 the saga store cannot be reached or answered unexpectedly
    │   └── LeaseLost              a write was refused because another replica owns the saga now
    ├── SagaNotFound               no saga instance (or no such step in it) with the given id
    ├── IllegalTransition          a status change the transition tables forbid (a caller bug)
    ├── DefinitionMissing          an instance is pinned to a definition version nobody knows
    ├── OperationRefused           an operator retry/abort the saga's status or live lease forbids
    ├── OperatorInputError         an operator query or action with a bad filter, limit or actor
    │                              (also a ``ValueError``)
    ├── UnstorableJson             a JSON document that is malformed or no saga store can keep (also
    │                              a ``ValueError``; a trigger body like that is refused with 400)
    ├── SendFailure                a step call got no answer; ``sent``: whether request bytes may
    │                              have reached the service (the caller records a retryable failure)
    ├── BrokerError                a message broker did not take a message
    │   ├── BrokerUnavailable      it cannot be reached now (down, reconnecting, no answer in time);
    │   │                          ``sent``: whether the message may have reached it
    │   └── PublishRefused         it answered and refused the message (nothing takes ``to``)
    └── UnusableMessage            raised by a consumer's handler: the delivery can never be applied
                                   (``reason``); it is acknowledged, logged and counted, not retried
"""

from __future__ import annotations

from enum import StrEnum


class SagaError(Exception):
    """Root of every exception raised by saga_runner."""


class TemplateRoot(StrEnum):
    """Where a template's lookup reads from (the first segment of ``{{ root.… }}``)."""

    INPUT = "input"
    HEADERS = "headers"
    SAGA = "saga"
    STEPS = "steps"


TRIGGER_ROOTS = frozenset({TemplateRoot.INPUT, TemplateRoot.HEADERS})


class TemplateError(SagaError):
    """A step call (or a saga's response or business id) cannot be rendered at run time.

    Attributes:
        root: the root of the lookup whose value could not be used (missing, or unusable where
            it goes: a path segment, a header value); None when no looked-up value is at fault
            (the call names a service that is not configured any more, has no compensation).
    """

    def __init__(self, message: str, *, root: TemplateRoot | None = None) -> None:
        super().__init__(message)
        self.root = root

    @property
    def from_trigger(self) -> bool:
        """Whether the trigger's input or headers are at fault (a 422, not a 502, for a client)."""
        return self.root in TRIGGER_ROOTS


class StoreError(SagaError):
    """The saga store is unreachable or failed."""


class LeaseLost(StoreError):
    """A conditional write was refused: another replica holds a newer lease on the saga."""


class SagaNotFound(SagaError):
    """No saga instance exists with the given id."""


class IllegalTransition(SagaError):
    """A saga or step status change that ``saga_runner.states`` does not allow."""

    def __init__(self, kind: str, old: str, new: str) -> None:
        self.kind = kind
        self.old = old
        self.new = new
        super().__init__(f"illegal {kind} status transition {old} -> {new}")


class DefinitionMissing(SagaError):
    """A saga instance is pinned to a definition version unknown to the catalog and the store."""


class OperationRefused(SagaError):
    """An operator action (retry, abort) that the saga's current state does not allow.

    Attributes:
        saga_id: the saga the action was refused on.
        status: the saga's status when it was refused.
    """

    def __init__(self, saga_id: str, status: str, message: str) -> None:
        self.saga_id = saga_id
        self.status = status
        super().__init__(message)


class OperatorInputError(SagaError, ValueError):
    """An operator query or action with an invalid argument (status, limit, cursor, actor)."""


class UnstorableJson(SagaError, ValueError):
    """A JSON document that is malformed, or that no saga store can keep as it is."""


class SendFailure(SagaError):
    """No answer came back. ``sent``: request bytes may have reached the service.

    ``detail`` describes the cause: the OS error when nothing was sent, the exception's repr
    otherwise.
    """

    def __init__(self, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.sent = sent


class BrokerError(SagaError):
    """A message broker did not take a message.

    Attributes:
        broker: the configured name of the broker.
        detail: what went wrong, without the broker's name.
    """

    def __init__(self, broker: str, message: str) -> None:
        super().__init__(f"broker {broker!r}: {message}")
        self.broker = broker
        self.detail = message


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached now: try again later, with the same message id.

    Attributes:
        sent: the message may have reached the broker (a re-send is deduplicated by its id where
            the broker can, see docs/SAGAS.md, Brokers).
    """

    def __init__(self, broker: str, message: str, *, sent: bool = False) -> None:
        super().__init__(broker, message)
        self.sent = sent


class PublishRefused(BrokerError):
    """The broker answered and did not take the message: no queue is bound to the routing key,
    no JetStream stream covers the subject, or it refused (nacked) the message.

    Attributes:
        to: the routing key or subject the message was published to.
    """

    def __init__(self, broker: str, to: str, message: str) -> None:
        super().__init__(broker, message)
        self.to = to


class UnusableMessage(SagaError):
    """Raised by a consume handler: this delivery can never be applied (bad JSON, unknown token).

    The consumer acknowledges it (it would fail the same way forever), logs it without its
    headers and counts it by ``reason``.

    Attributes:
        reason: a short label for ``saga_callback_rejected_total{reason}``, from a small fixed
            set (``saga_runner.brokers.RejectReason``), never from the message itself.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail
