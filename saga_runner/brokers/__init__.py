"""Message brokers saga steps publish to and whose completion messages finish waiting steps.

``base`` holds the one interface (``BrokerAdapter``) and what crosses it; ``settling`` the
ack-after-handler policy every adapter shares; ``connecting`` the connection state ``ready``
reports and the first connect with backoff; ``rabbitmq`` (aio-pika) and ``jetstream`` (nats-py)
the adapters; ``urls`` which URL scheme is which broker; ``registry`` the configured brokers by
name. docs/SAGAS.md (Brokers) describes the messages; errors live in ``saga_runner.errors``.

Importing this package loads no broker client (the config imports ``urls``); the adapters and
the registry are imported from their modules.
"""

from __future__ import annotations

from saga_runner.brokers.base import (
    CALLBACK_TOKEN_HEADER,
    CALLBACK_URL_HEADER,
    BrokerAdapter,
    BrokerSettings,
    Delivery,
    Handler,
    PublishReceipt,
    RejectReason,
    Subscription,
)

__all__ = [
    "CALLBACK_TOKEN_HEADER",
    "CALLBACK_URL_HEADER",
    "BrokerAdapter",
    "BrokerSettings",
    "Delivery",
    "Handler",
    "PublishReceipt",
    "RejectReason",
    "Subscription",
]
