"""The RabbitMQ adapter (aio-pika): publish with confirms, consume with manual acks.

One robust connection per broker (aio-pika's ``connect_robust``: after the first connect it
reconnects by itself and restores its channels, queues and consumers), with two channels: one
with publisher confirms for ``publish``, one with a prefetch bound for ``consume``.

- ``publish`` sends to the default exchange with routing key ``to``, persistent, ``message_id``
  set and ``mandatory``: a routing key no queue is bound to comes back and is refused
  (``PublishRefused``), never dropped silently. It returns once the broker confirmed it.
- ``consume`` declares the ``callbacks`` queue (durable; one that exists with other arguments,
  such as a quorum queue, is used as it is) and consumes it with manual acks; each
  delivery is settled by ``saga_runner.brokers.settling`` and acknowledged only after its handler
  returned. RabbitMQ does not deduplicate: a re-sent message (same ``message_id``) is delivered
  again, and applying it is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import ChannelPreconditionFailed, DeliveryError, PublishError

from saga_runner.brokers.base import (
    BrokerSettings,
    Delivery,
    Handler,
    PublishReceipt,
    RejectCounter,
)
from saga_runner.brokers.connecting import (
    Link,
    connect_until_up,
    consumer_failed,
    describe,
    keep_trying,
    stop,
)
from saga_runner.brokers.settling import InFlight, Verdict, log, settle
from saga_runner.errors import BrokerUnavailable, PublishRefused

# aio-pika and aiormq log every published message and frame at DEBUG, headers included: a
# callback token must never reach a log, so they are held to INFO and above.
for _library in ("aio_pika", "aiormq"):
    logging.getLogger(_library).setLevel(logging.INFO)

# Seconds between reconnect attempts once connected (aio-pika's robust connection).
RECONNECT_INTERVAL = 1.0
CONNECT_TIMEOUT = 5.0
# Seconds cancelling a consumer waits for the broker's answer.
CANCEL_TIMEOUT = 5.0


class RabbitMQBroker:
    """A ``BrokerAdapter`` for RabbitMQ (see the module docstring)."""

    def __init__(self, name: str, settings: BrokerSettings, on_rejected: RejectCounter) -> None:
        self.name = name
        self.callbacks = settings.callbacks
        self._settings = settings
        self._on_rejected = on_rejected
        self._link = Link(name)
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._subscription: _QueueSubscription | None = None

    async def open(self) -> None:
        """Start connecting in the background (see ``BrokerAdapter.open``)."""
        self._connecting = asyncio.create_task(
            connect_until_up(self._link, self._connect), name=f"broker-{self.name}"
        )

    async def _connect(self) -> None:
        connection = await aio_pika.connect_robust(
            self._settings.url,
            timeout=CONNECT_TIMEOUT,
            reconnect_interval=RECONNECT_INTERVAL,
            client_properties={"connection_name": f"saga-sidecar broker {self.name}"},
        )
        try:
            self._publisher = await connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        except BaseException:
            await connection.close()
            raise
        connection.close_callbacks.add(self._on_close)
        connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection = connection
        self._link.connected()

    def _on_close(self, _connection: object, exc: BaseException | None = None) -> None:
        self._link.down(f"connection lost: {describe(exc) if exc else 'closed'}")

    def _on_reconnect(self, _connection: object) -> None:
        self._link.connected()

    async def publish(
        self, to: str, body: bytes, headers: Mapping[str, str], message_id: str
    ) -> PublishReceipt:
        """Publish one persistent message to routing key ``to`` and wait for its confirm."""
        self._link.check()
        if self._publisher is None:
            raise BrokerUnavailable(self.name, "not connected yet")
        message = aio_pika.Message(
            body,
            headers=dict(headers),
            message_id=message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self._publisher.default_exchange.publish(
                message, routing_key=to, mandatory=True, timeout=self._settings.publish_timeout
            )
        # (The message is left out of what these say: its headers may carry a callback token.)
        except PublishError as exc:
            raise PublishRefused(self.name, to, f"no queue is bound to {to!r}") from exc
        except DeliveryError as exc:
            raise PublishRefused(self.name, to, "the broker refused (nacked) the message") from exc
        except TimeoutError as exc:
            raise BrokerUnavailable(self.name, "no confirm in time", sent=True) from exc
        except Exception as exc:
            raise BrokerUnavailable(self.name, type(exc).__name__, sent=True) from exc
        return PublishReceipt(duplicate=None)

    def consume(self, handler: Handler) -> _QueueSubscription:
        """Consume the ``callbacks`` queue with ``handler`` (starts once connected)."""
        if self._subscription is not None:
            raise RuntimeError(f"broker {self.name!r} already has a consumer")
        subscription = _QueueSubscription(self, handler)
        self._subscription = subscription
        subscription.start_soon()
        return subscription

    async def _connected(self) -> AbstractRobustConnection:
        """The connection, once the first connect succeeded."""
        while self._connection is None:
            await self._link.up.wait()
        return self._connection

    async def _settle(self, handler: Handler, message: AbstractIncomingMessage) -> None:
        delivery = Delivery(
            body=message.body,
            headers={key: _text(value) for key, value in (message.headers or {}).items()},
            message_id=message.message_id,
            redelivered=bool(message.redelivered),
        )
        verdict = await settle(self.name, handler, delivery, self._on_rejected)
        try:
            if verdict is Verdict.ACK:
                await message.ack()
            else:
                await asyncio.sleep(self._settings.retry_delay)
                await message.nack(requeue=True)
        except Exception as exc:  # the channel is gone: the broker redelivers it
            log.warning(
                "broker %s: could not settle a message (it will be delivered again): %s",
                self.name,
                describe(exc),
                extra={"broker": self.name, "message_id": delivery.message_id},
            )

    async def ready(self) -> None:
        """Return when connected, else raise ``BrokerUnavailable`` saying why."""
        self._link.check()

    async def close(self, grace: float) -> None:
        """Cancel the consumer (``grace`` for deliveries being handled), then disconnect."""
        self._link.closed()
        if self._connecting is not None:
            await stop(self._connecting)
        if self._subscription is not None:
            await self._subscription.cancel(grace)
        if self._connection is not None:
            await self._connection.close()
            self._connection = None


class _QueueSubscription:
    """The consumer of a RabbitMQ broker's ``callbacks`` queue."""

    def __init__(self, broker: RabbitMQBroker, handler: Handler) -> None:
        self._broker = broker
        self._handler = handler
        self._inflight = InFlight(broker._settings.prefetch)
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._starting: asyncio.Task[None] | None = None

    def start_soon(self) -> None:
        """Start consuming in the background, once (and whenever) the broker answers."""
        self._starting = asyncio.create_task(self._start())

    async def _start(self) -> None:
        """Declare the queue and consume it on a channel of its own, retrying until it works;
        after that the robust connection restores the consumer after every reconnect."""
        await keep_trying(self._consume, self._failed)

    def _failed(self, exc: Exception) -> None:
        consumer_failed(self._broker.name, self._broker.callbacks, exc)

    async def _consume(self) -> None:
        connection = await self._broker._connected()
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._broker._settings.prefetch)
        try:
            self._queue = await channel.declare_queue(self._broker.callbacks, durable=True)
        except ChannelPreconditionFailed:
            # It exists with other arguments (a quorum queue an operator made): use it as it is.
            with contextlib.suppress(Exception):
                await channel.close()
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self._broker._settings.prefetch)
            self._queue = await channel.declare_queue(self._broker.callbacks, passive=True)
        self._tag = await self._queue.consume(self._deliver, no_ack=False)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        await self._inflight.acquire()
        self._inflight.start(self._broker._settle(self._handler, message))

    async def cancel(self, grace: float) -> None:
        """Stop taking deliveries; let those being handled finish within ``grace``."""
        if self._starting is not None:
            await stop(self._starting)
        if self._queue is not None and self._tag is not None:
            try:
                if not self._broker._link.up.is_set():
                    raise BrokerUnavailable(self._broker.name, "not connected")
                # A connection lost meanwhile never answers: its channel waits to be restored.
                await asyncio.wait_for(self._queue.cancel(self._tag), CANCEL_TIMEOUT)
            except Exception as exc:  # the connection is down: nothing more is delivered
                log.debug("broker %s: cancel failed: %s", self._broker.name, describe(exc))
            self._tag = None
        await self._inflight.drain(grace)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def reach(name: str, url: str) -> None:
    """Connect once and disconnect (``saga-sidecar check --connect``); raises the client's error."""
    connection = await aio_pika.connect(url)
    await connection.close()
