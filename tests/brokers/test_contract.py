"""The broker contract, run against real RabbitMQ and NATS JetStream alike.

Publish and consume round-trip headers and message ids; a delivery is acknowledged only after
its handler returned (a transient failure is delivered again, then acknowledged once; a handler
cut off mid-way leaves it to the next consumer); a message the handler rejects as unusable is
acknowledged, counted and logged without its token; a broker that cannot be reached is reported
by ``ready`` and refuses publishes at once, while nothing else waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import aio_pika
import nats.errors
import pytest
from conftest import find_free_port

from brokers.conftest import (
    OpenBroker,
    Recorder,
    publish_when_consumed,
    wait_ready,
)
from saga_runner.brokers.base import CALLBACK_TOKEN_HEADER, MAX_COMPLETION_BODY, BrokerAdapter
from saga_runner.brokers.jetstream import _PullSubscription
from saga_runner.errors import BrokerUnavailable, PublishRefused, UnusableMessage

QUIET = 0.6  # seconds in which a settled delivery must not come back


async def test_publish_and_consume_round_trip_body_headers_and_message_id(
    broker: BrokerAdapter,
) -> None:
    recorder = Recorder()
    broker.consume(recorder)
    headers = {"saga-callback": "http://shop/_saga/callbacks/t1", "x-trace": "abc"}
    await publish_when_consumed(broker, b'{"outcome": "success"}', headers, "saga-1:ship:action")

    [delivery] = await recorder.wait_for(1)
    assert delivery.body == b'{"outcome": "success"}'
    assert delivery.message_id == "saga-1:ship:action"
    assert delivery.headers["saga-callback"] == "http://shop/_saga/callbacks/t1"
    assert delivery.headers["x-trace"] == "abc"
    assert delivery.redelivered is False
    await asyncio.sleep(QUIET)
    assert len(recorder.deliveries) == 1


async def test_a_transient_handler_failure_is_delivered_again_then_acknowledged_once(
    broker: BrokerAdapter,
) -> None:
    recorder = Recorder()
    recorder.answers = [ConnectionError("saga store unavailable")]
    broker.consume(recorder)
    await publish_when_consumed(broker, b"{}", message_id="m-transient")

    first, second = await recorder.wait_for(2)
    assert (first.message_id, second.message_id) == ("m-transient", "m-transient")
    assert (first.redelivered, second.redelivered) == (False, True)
    await asyncio.sleep(QUIET)
    assert len(recorder.deliveries) == 2  # the successful second run was acknowledged


async def test_a_delivery_is_acknowledged_only_after_its_handler_returned(
    open_broker: OpenBroker, kind: str
) -> None:
    broker = await open_broker(kind)
    await wait_ready(broker)
    stalled = Recorder()
    stalled.gate = asyncio.Event()  # never set: the handler is cut off by the shutdown
    broker.consume(stalled)
    await publish_when_consumed(broker, b"{}", message_id="m-unfinished")
    await stalled.wait_for(1)
    await broker.close(grace=0.1)

    successor = await open_broker(kind)
    recorder = Recorder()
    successor.consume(recorder)
    [delivery] = await recorder.wait_for(1)  # at once: the broker took it back
    assert delivery.message_id == "m-unfinished"


async def test_an_unusable_message_is_acknowledged_counted_and_logged_without_its_token(
    open_broker: OpenBroker, kind: str, captured_logs: list[logging.LogRecord]
) -> None:
    rejected: list[str] = []
    adapter = await open_broker(kind, on_rejected=rejected.append)
    await wait_ready(adapter)
    token = f"tok-{uuid.uuid4().hex}"
    recorder = Recorder()
    recorder.answers = [UnusableMessage("unknown_token", f"no step waits for token {token}")]
    adapter.consume(recorder)
    await publish_when_consumed(adapter, b"{}", {CALLBACK_TOKEN_HEADER: token}, "m-poison")

    [delivery] = await recorder.wait_for(1)
    assert delivery.headers[CALLBACK_TOKEN_HEADER] == token
    await asyncio.sleep(QUIET)
    assert len(recorder.deliveries) == 1  # acknowledged, not redelivered
    assert rejected == ["unknown_token"]
    logged = "\n".join(f"{record.getMessage()} {vars(record)}" for record in captured_logs)
    assert "broker message rejected" in logged
    assert "m-poison" in logged
    assert token not in logged


async def test_a_body_above_1mib_is_rejected_without_calling_the_handler(
    open_broker: OpenBroker,
) -> None:
    rejected = asyncio.Queue[str]()
    adapter = await open_broker("rabbitmq", on_rejected=rejected.put_nowait)
    await wait_ready(adapter)
    recorder = Recorder()
    adapter.consume(recorder)
    await publish_when_consumed(adapter, b"{}", message_id="m-small")
    await recorder.wait_for(1)
    await adapter.publish(adapter.callbacks, b" " * (MAX_COMPLETION_BODY + 1), {}, "m-large")
    assert await asyncio.wait_for(rejected.get(), 10) == "too_large"
    await asyncio.sleep(QUIET)
    assert recorder.ids() == ["m-small"]
    assert rejected.empty()


async def test_nats_refuses_a_message_above_the_servers_max_payload(
    open_broker: OpenBroker,
) -> None:
    adapter = await open_broker("nats")
    await wait_ready(adapter)
    adapter.consume(Recorder())
    await publish_when_consumed(adapter, b"{}")
    with pytest.raises(PublishRefused):
        await adapter.publish(adapter.callbacks, b" " * (MAX_COMPLETION_BODY + 1), {}, "m-big")


async def test_an_unreachable_broker_is_reported_and_refuses_publishes_at_once(
    open_broker: OpenBroker, kind: str
) -> None:
    port = find_free_port()  # nothing listens there
    url = (
        f"amqp://guest:secret@127.0.0.1:{port}/"
        if kind == "rabbitmq"
        else (f"nats://127.0.0.1:{port}")
    )
    started = time.monotonic()
    adapter = await open_broker(kind, url=url)
    assert time.monotonic() - started < 1  # opening does not wait for the broker
    await asyncio.sleep(0.5)

    with pytest.raises(BrokerUnavailable) as failure:
        await adapter.ready()
    assert "cannot connect" in str(failure.value)
    assert "secret" not in str(failure.value)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as refused:
        await adapter.publish("jobs", b"{}", {}, "m-1")
    assert refused.value.sent is False
    assert time.monotonic() - started < 0.5
    adapter.consume(Recorder())  # a consumer waits for the broker; it blocks nothing


async def test_publishing_to_a_name_nothing_takes_is_refused(
    open_broker: OpenBroker, kind: str, unique_name: str
) -> None:
    adapter = await open_broker(kind)
    await wait_ready(adapter)
    with pytest.raises(PublishRefused) as refused:
        await adapter.publish(f"{unique_name}.nobody", b"{}", {}, "m-1")
    assert refused.value.to == f"{unique_name}.nobody"


async def test_closing_stops_the_consumer_and_leaves_later_messages_queued(
    open_broker: OpenBroker, kind: str
) -> None:
    adapter = await open_broker(kind)
    await wait_ready(adapter)
    recorder = Recorder()
    adapter.consume(recorder)
    await publish_when_consumed(adapter, b"{}", message_id="m-before")
    await recorder.wait_for(1)
    publisher = await open_broker(kind, callbacks=adapter.callbacks)
    await wait_ready(publisher)
    await adapter.close(grace=1)

    await publisher.publish(adapter.callbacks, b"{}", {}, "m-after")
    await asyncio.sleep(QUIET)
    assert recorder.ids() == ["m-before"]
    successor = await open_broker(kind, callbacks=adapter.callbacks)
    later = Recorder()
    successor.consume(later)
    assert [d.message_id for d in await later.wait_for(1)] == ["m-after"]


async def test_rabbitmq_consumes_a_callbacks_queue_an_operator_made_as_a_quorum_queue(
    open_broker: OpenBroker, rabbitmq_url: str, unique_name: str
) -> None:
    connection = await aio_pika.connect(rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(unique_name, durable=True, arguments={"x-queue-type": "quorum"})
    adapter = await open_broker("rabbitmq")
    await wait_ready(adapter)
    recorder = Recorder()
    adapter.consume(recorder)
    await publish_when_consumed(adapter, b"{}", message_id="m-quorum")
    assert [d.message_id for d in await recorder.wait_for(1)] == ["m-quorum"]


async def test_a_nats_consumer_stops_even_when_the_client_swallows_its_cancellation(
    open_broker: OpenBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py's ``next_msg`` answers a cancellation with ``ConnectionClosedError`` once its
    connection is closed; stopping the consumer must not then hang (it once did, for the
    120 s of a CI test's timeout)."""

    async def swallowing_pull(self: object, subscription: object) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise nats.errors.ConnectionClosedError from None

    monkeypatch.setattr(_PullSubscription, "_pull", swallowing_pull)
    adapter = await open_broker("nats")
    await wait_ready(adapter)
    subscription = adapter.consume(Recorder())
    await asyncio.sleep(0.5)  # subscribed, pulling

    await asyncio.wait_for(subscription.cancel(1.0), 10)
