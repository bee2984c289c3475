"""A message re-sent with the same id (after a crash, or an outage that hid the first confirm).

NATS JetStream drops the copy within the stream's duplicate window and says so; RabbitMQ has no
such window, so the copy is delivered again under the same ``message_id``, which is what the
consumer deduplicates by (docs/SAGAS.md, Brokers).
"""

from __future__ import annotations

import asyncio

from brokers.conftest import OpenBroker, Recorder, publish_when_consumed, wait_ready


async def test_nats_drops_a_republished_message_id(open_broker: OpenBroker) -> None:
    adapter = await open_broker("nats")
    await wait_ready(adapter)
    recorder = Recorder()
    adapter.consume(recorder)

    first = await publish_when_consumed(adapter, b'{"n": 1}', message_id="saga-9:ship:action")
    again = await adapter.publish(adapter.callbacks, b'{"n": 1}', {}, "saga-9:ship:action")
    other = await adapter.publish(adapter.callbacks, b'{"n": 2}', {}, "saga-9:pack:action")

    assert (first.duplicate, again.duplicate, other.duplicate) == (False, True, False)
    await recorder.wait_for(2)
    await asyncio.sleep(0.6)
    assert recorder.ids() == ["saga-9:ship:action", "saga-9:pack:action"]


async def test_rabbitmq_delivers_a_republished_message_again_under_the_same_id(
    open_broker: OpenBroker,
) -> None:
    adapter = await open_broker("rabbitmq")
    await wait_ready(adapter)
    recorder = Recorder()
    adapter.consume(recorder)

    first = await publish_when_consumed(adapter, b"{}", message_id="saga-9:ship:action")
    again = await adapter.publish(adapter.callbacks, b"{}", {}, "saga-9:ship:action")

    assert (first.duplicate, again.duplicate) == (None, None)  # RabbitMQ cannot tell
    await recorder.wait_for(2)
    assert recorder.ids() == ["saga-9:ship:action", "saga-9:ship:action"]
