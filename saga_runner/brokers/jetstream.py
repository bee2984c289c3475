"""The NATS JetStream adapter (nats-py): publish with dedup ids, consume a durable pull consumer.

One connection per broker; nats-py keeps retrying the first connect and reconnects after any
loss by itself (``max_reconnect_attempts=-1``), telling the ``Link`` through its callbacks.

- ``publish`` sends to JetStream subject ``to`` with header ``Nats-Msg-Id`` and waits for the
  stream's acknowledgement; the stream drops a copy with an id it saw within its duplicate
  window (``PublishReceipt.duplicate``). A subject no stream covers is refused
  (``PublishRefused``): the services consuming it own their stream.
- ``consume`` uses the stream that covers the ``callbacks`` subject, creating one when none does
  (``stream_name``: file storage, work-queue retention), and pulls from a durable consumer of
  the same name with explicit acks. A delivery is acknowledged (and the ack confirmed) only
  after its handler returned; while the handler runs its ack deadline is pushed forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from saga_runner.brokers.base import (
    BrokerSettings,
    Delivery,
    Handler,
    PublishReceipt,
    RejectCounter,
)
from saga_runner.brokers.connecting import Link, consumer_failed, describe, keep_trying, stop
from saga_runner.brokers.settling import InFlight, Verdict, log, settle
from saga_runner.errors import BrokerUnavailable, PublishRefused

CONNECT_TIMEOUT = 2
RECONNECT_WAIT = 1  # seconds between reconnect attempts to the same server
FETCH_WAIT = 5.0  # a pull waits this long for a message before it is made again
MSG_ID_HEADER = "Nats-Msg-Id"
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_-]")


def stream_name(subject: str) -> str:
    """The stream (and durable consumer) name the sidecar uses for a ``callbacks`` subject:
    every character other than a letter, digit, ``-`` or ``_`` becomes ``_``."""
    return _NOT_A_NAME.sub("_", subject)


class JetStreamBroker:
    """A ``BrokerAdapter`` for NATS JetStream (see the module docstring)."""

    def __init__(self, name: str, settings: BrokerSettings, on_rejected: RejectCounter) -> None:
        self.name = name
        self.callbacks = settings.callbacks
        self._settings = settings
        self._on_rejected = on_rejected
        self._link = Link(name)
        self._client = Client()
        self._js: JetStreamContext | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._subscription: _PullSubscription | None = None

    async def open(self) -> None:
        """Start connecting in the background (see ``BrokerAdapter.open``)."""
        self._connecting = asyncio.create_task(self._connect(), name=f"broker-{self.name}")

    async def _connect(self) -> None:
        await self._client.connect(
            servers=[self._settings.url],
            name=f"saga-sidecar broker {self.name}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT,
            connect_timeout=CONNECT_TIMEOUT,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._js = self._client.jetstream(timeout=self._settings.publish_timeout)
        self._link.connected()

    async def _on_error(self, exc: Exception) -> None:
        if not self._client.is_connected:
            self._link.down(f"cannot connect: {describe(exc)}")

    async def _on_disconnected(self) -> None:
        self._link.down("connection lost, reconnecting")

    async def _on_reconnected(self) -> None:
        self._link.connected()

    async def publish(
        self, to: str, body: bytes, headers: Mapping[str, str], message_id: str
    ) -> PublishReceipt:
        """Publish one message to JetStream subject ``to`` and wait for the stream's ack."""
        js = self._usable()
        try:
            ack = await js.publish(
                to,
                body,
                timeout=self._settings.publish_timeout,
                headers={**headers, MSG_ID_HEADER: message_id},
            )
        except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError) as exc:
            raise PublishRefused(self.name, to, f"no JetStream stream covers {to!r}") from exc
        except nats.errors.MaxPayloadError as exc:
            raise PublishRefused(self.name, to, f"too large: {describe(exc)}") from exc
        except nats.js.errors.APIError as exc:
            raise PublishRefused(self.name, to, f"refused: {describe(exc)}") from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(self.name, f"no ack: {describe(exc)}", sent=True) from exc
        return PublishReceipt(duplicate=bool(ack.duplicate))

    def _usable(self) -> JetStreamContext:
        self._link.check()
        if self._js is None or not self._client.is_connected:
            raise BrokerUnavailable(self.name, "not connected")
        return self._js

    def consume(self, handler: Handler) -> _PullSubscription:
        """Consume the ``callbacks`` subject with ``handler`` (starts once connected)."""
        if self._subscription is not None:
            raise RuntimeError(f"broker {self.name!r} already has a consumer")
        self._subscription = _PullSubscription(self, handler)
        return self._subscription

    async def _settle(self, handler: Handler, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        delivery = Delivery(
            body=msg.data,
            headers=headers,
            message_id=headers.get(MSG_ID_HEADER),
            redelivered=msg.metadata.num_delivered > 1,
        )
        keep_alive = asyncio.create_task(_renew_while_handled(msg, self._settings.ack_wait / 3))
        try:
            verdict = await settle(self.name, handler, delivery, self._on_rejected)
        except asyncio.CancelledError:  # shutting down: hand it back now, not after ack_wait
            with contextlib.suppress(Exception):
                await asyncio.wait_for(msg.nak(), 1.0)
            raise
        finally:
            keep_alive.cancel()
        try:
            if verdict is Verdict.ACK:
                await msg.ack_sync(timeout=self._settings.publish_timeout)
            else:
                await msg.nak(delay=self._settings.retry_delay)
        except Exception as exc:  # unacknowledged: JetStream redelivers it after ack_wait
            log.warning(
                "broker %s: could not settle a message (it will be delivered again): %s",
                self.name,
                describe(exc),
                extra={"broker": self.name, "message_id": delivery.message_id},
            )

    async def ready(self) -> None:
        """Return when connected, else raise ``BrokerUnavailable`` saying why."""
        self._usable()

    async def close(self, grace: float) -> None:
        """Cancel the consumer (``grace`` for deliveries being handled), then disconnect."""
        self._link.closed()
        if self._subscription is not None:
            await self._subscription.cancel(grace)
        if self._connecting is not None:
            await stop(self._connecting)
        if not self._client.is_closed:
            await self._client.close()


class _PullSubscription:
    """The durable pull consumer of a NATS broker's ``callbacks`` subject."""

    def __init__(self, broker: JetStreamBroker, handler: Handler) -> None:
        self._broker = broker
        self._handler = handler
        self._inflight = InFlight(broker._settings.prefetch)
        self._running = asyncio.create_task(self._run())

    async def _run(self) -> None:
        """Subscribe and pull until cancelled; start again after any failure, with backoff."""
        while True:
            await keep_trying(self._consume, self._failed)

    def _failed(self, exc: Exception) -> None:
        consumer_failed(self._broker.name, self._broker.callbacks, exc)

    async def _consume(self) -> None:
        await self._broker._link.up.wait()
        subscription = await self._subscribe()
        try:
            await self._pull(subscription)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        js = self._broker._usable()
        subject = self._broker.callbacks
        try:
            stream = await js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            stream = stream_name(subject)
            await js.add_stream(
                StreamConfig(
                    name=stream,
                    subjects=[subject],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                )
            )
        return await js.pull_subscribe(
            subject,
            durable=stream_name(subject),
            stream=stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self._broker._settings.ack_wait,
                max_deliver=-1,
                max_ack_pending=self._broker._settings.prefetch * 4,
            ),
        )

    async def _pull(self, subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            await self._inflight.acquire()
            try:
                messages = await subscription.fetch(batch=1, timeout=FETCH_WAIT)
            except nats.errors.TimeoutError:
                self._inflight.release()
                continue
            except BaseException:
                self._inflight.release()
                raise
            for message in messages:
                self._inflight.start(self._broker._settle(self._handler, message))

    async def cancel(self, grace: float) -> None:
        """Stop pulling; let the deliveries being handled finish within ``grace``."""
        await stop(self._running)
        await self._inflight.drain(grace)


async def _renew_while_handled(msg: Msg, every: float) -> None:
    """Tell JetStream the delivery is still being worked on, so it is not redelivered meanwhile."""
    while True:
        await asyncio.sleep(every)
        try:
            await msg.in_progress()
        except Exception as exc:
            log.debug("could not renew a delivery's ack deadline: %s", describe(exc))


async def reach(name: str, url: str) -> None:
    """Connect once, ask JetStream for the account's limits (a server without ``-js`` fails
    here), disconnect (``saga-sidecar check --connect``); raises the client's error, or
    ``BrokerUnavailable`` when JetStream is off."""
    failures: list[Exception] = []

    async def remember(exc: Exception) -> None:
        failures.append(exc)

    client = Client()
    try:
        await client.connect(
            servers=[url],
            allow_reconnect=False,
            max_reconnect_attempts=1,  # nats-py tries a server up to this many times more
            reconnect_time_wait=0,
            connect_timeout=CONNECT_TIMEOUT,
            error_cb=remember,
        )
    except nats.errors.NoServersError:
        if failures:  # say why, not only that no server was left to try
            raise failures[-1] from None
        raise
    try:
        await client.jetstream().account_info()
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
        raise BrokerUnavailable(name, "JetStream is not enabled on this server (-js)") from exc
    finally:
        await client.close()
