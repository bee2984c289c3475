"""The one interface every message broker adapter implements, and what crosses it.

``BrokerAdapter`` is what the saga engine and the hosting see of a broker: ``publish`` one message
(to a RabbitMQ routing key on the default exchange, or a NATS JetStream subject) with headers and
a stable message id; ``consume`` the broker's ``callbacks`` queue or subject with a handler whose
completion decides the acknowledgement; ``ready`` for ``/readyz``; ``close``. A new broker kind
(Kafka, say) is one more adapter module and one more URL scheme in ``saga_runner.brokers.urls``.

Delivery guarantees, the same for every adapter:

- A delivery is acknowledged only after its handler returned, so a crash (of the sidecar or of
  the broker) before that leaves it to be delivered again: at least once. Handlers apply outcomes
  idempotently (the same outcome twice is recorded once), which makes the effect exactly once.
- A handler that raises ``UnusableMessage`` says the delivery can never be applied: it is
  acknowledged, logged without its headers (the ``saga-callback-token`` is a secret), and counted
  by reason. Any other exception is transient (the store is down): the delivery is returned to
  the broker after ``retry_delay`` and delivered again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

# Headers of a published message that expects a completion, and of a completion message.
CALLBACK_URL_HEADER = "saga-callback"
CALLBACK_TOKEN_HEADER = "saga-callback-token"
# The largest completion body applied, as for an HTTP callback; a larger one is rejected unread.
MAX_COMPLETION_BODY = 1024**2


class RejectReason(StrEnum):
    """Why a delivery can never be applied: the ``reason`` label of
    ``saga_callback_rejected_total`` (a fixed set, so the label's values stay few)."""

    MISSING_TOKEN = "missing_token"
    UNKNOWN_TOKEN = "unknown_token"
    BAD_JSON = "bad_json"
    BAD_BODY = "bad_body"
    TOO_LARGE = "too_large"
    CONFLICT = "conflict"
    NOT_WAITING = "not_waiting"


@dataclass(frozen=True)
class Delivery:
    """One message taken from a broker's ``callbacks`` queue or subject.

    ``headers`` and ``body`` are left out of ``repr``: the token header is a secret.

    Attributes:
        body: the payload as received.
        headers: the message's headers, values as strings.
        message_id: RabbitMQ's ``message_id`` or NATS's ``Nats-Msg-Id`` (None when absent).
        redelivered: the broker delivered it before (and it was not acknowledged then).
    """

    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    message_id: str | None
    redelivered: bool


@dataclass(frozen=True)
class PublishReceipt:
    """What the broker said when it took a message.

    Attributes:
        duplicate: the broker recognised the message id and dropped the copy (NATS JetStream
            within the stream's duplicate window); None when the broker cannot tell (RabbitMQ).
    """

    duplicate: bool | None


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach one broker and consume its completions.

    Attributes:
        url: ``amqp(s)://user:password@host:port/vhost`` or ``nats://host:port`` (``tls://``).
        callbacks: the queue (RabbitMQ) or subject (NATS) completion messages arrive on.
        prefetch: deliveries handed to handlers at once (unacknowledged at most).
        retry_delay: seconds before a delivery whose handler failed transiently is handed back.
        publish_timeout: seconds a publish waits for the broker to take the message.
        ack_wait: NATS: seconds after which JetStream redelivers a delivery that was neither
            acknowledged nor renewed (a handler's delivery is renewed while it runs).
    """

    url: str
    callbacks: str
    prefetch: int = 32
    retry_delay: float = 1.0
    publish_timeout: float = 10.0
    ack_wait: float = 30.0


Handler = Callable[[Delivery], Awaitable[None]]
"""Applies one delivery; returns once its outcome is committed (see the module docstring)."""

RejectCounter = Callable[[str], None]
"""Called with the reason of every delivery a handler rejected (``UnusableMessage``)."""


class Subscription(Protocol):
    """A running consumer of a broker's ``callbacks`` queue or subject."""

    async def cancel(self, grace: float) -> None:
        """Take no new deliveries; let those being handled finish within ``grace`` seconds
        (one still running then is cancelled and, unacknowledged, delivered again later)."""
        ...


class BrokerAdapter(Protocol):
    """A connection to one configured broker (see the module docstring for the guarantees).

    Attributes:
        name: the broker's name in ``sagas.brokers``.
        callbacks: the queue (RabbitMQ) or subject (NATS) completion messages arrive on.
    """

    name: str
    callbacks: str

    async def open(self) -> None:
        """Start connecting in the background and return at once: a broker that is down at
        start is retried with backoff, and reported by ``ready`` until it answers."""
        ...

    async def publish(
        self, to: str, body: bytes, headers: Mapping[str, str], message_id: str
    ) -> PublishReceipt:
        """Publish one persistent message and wait until the broker has taken it.

        Args:
            to: a RabbitMQ routing key on the default exchange (a queue name), or a NATS
                JetStream subject.
            body: the payload.
            headers: string headers sent with it.
            message_id: a stable id (``<saga id>:<step>:action``): the same message re-sent
                carries the same id, so it is deduplicated where the broker can.

        Raises:
            BrokerUnavailable: the broker cannot be reached now; retry with the same id.
            PublishRefused: the broker answered and did not take it.
        """
        ...

    def consume(self, handler: Handler) -> Subscription:
        """Start consuming ``callbacks`` with ``handler`` (at most one subscription at a time).

        Returns at once; consuming starts (and restarts after an outage) whenever the broker
        answers.
        """
        ...

    async def ready(self) -> None:
        """Return when the broker is connected.

        Raises:
            BrokerUnavailable: it is not, saying why.
        """
        ...

    async def close(self, grace: float) -> None:
        """Cancel the subscription (``grace`` for deliveries being handled) and disconnect."""
        ...
