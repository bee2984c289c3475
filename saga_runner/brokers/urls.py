"""Which broker a URL names: the one table of URL schemes the sidecar supports.

``amqp://`` and ``amqps://`` are RabbitMQ (AMQP 0-9-1), ``nats://`` and ``tls://`` NATS
JetStream. The config validates ``sagas.brokers`` with ``broker_kind``; the registry picks the
adapter with it. This module imports no broker client, so loading a config stays cheap.
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import urlsplit

from saga_runner.store.postgres import redact_url


class BrokerKind(StrEnum):
    """A kind of message broker the sidecar has an adapter for."""

    RABBITMQ = "rabbitmq"
    NATS = "nats"


SCHEMES: dict[str, BrokerKind] = {
    "amqp": BrokerKind.RABBITMQ,
    "amqps": BrokerKind.RABBITMQ,
    "nats": BrokerKind.NATS,
    "tls": BrokerKind.NATS,
}


def broker_kind(url: str) -> BrokerKind:
    """The kind of broker ``url`` names.

    Raises:
        ValueError: the scheme is not one of ``SCHEMES``, or the URL names no host.
    """
    parts = urlsplit(url)
    kind = SCHEMES.get(parts.scheme.lower())
    if kind is None:
        known = ", ".join(f"{scheme}://" for scheme in SCHEMES)
        raise ValueError(
            f"unknown broker URL scheme in {redact_url(url)!r}: expected one of {known} "
            "(amqp/amqps: RabbitMQ, nats/tls: NATS JetStream)"
        )
    if not parts.hostname:
        raise ValueError(f"the broker URL {redact_url(url)!r} names no host")
    return kind
