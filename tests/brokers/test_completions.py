"""Completion messages: a service finishes a waiting step by publishing to the broker's
``callbacks`` queue or subject instead of POSTing the step's callback URL.

In-process sidecars (the saga suite's harness) on PostgreSQL, consuming a real RabbitMQ queue or
NATS JetStream subject (every test runs on both). The order saga's ``charge`` awaits a callback;
the test plays the payment service: it takes the token from the charge call's ``Saga-Callback``
header and publishes ``{"outcome": ..., "result": ...}`` with header ``saga-callback-token``
through an adapter of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import nats
import pytest
from idempotency.cuttable import CuttableProxy
from sagas.awaiting import awaiting_saga, charge_token, start_order, step_in, waiting_charge
from sagas.conftest import SidecarFactory
from sagas.harness import TERMINAL, Database, SidecarHarness

from brokers.conftest import NatsServer, OpenBroker, logged, publish_when_consumed, wait_ready
from brokers.test_outages import close_from_server, wait_down
from proxy.keys import BROKERS
from saga_runner.brokers.base import (
    CALLBACK_TOKEN_HEADER,
    BrokerAdapter,
    PublishReceipt,
    RejectReason,
)
from saga_runner.brokers.jetstream import stream_name
from saga_runner.errors import BrokerUnavailable, PublishRefused
from saga_runner.records import SagaInstance
from saga_runner.states import SagaStatus, StepStatus

NOT_APPLIED = "broker message not applied, will be delivered again"


@pytest.fixture
def backend() -> str:
    """PostgreSQL: the store of a deployment with brokers, and one a test can cut off."""
    return "postgres"


@dataclass
class Consuming:
    """An in-process sidecar consuming one broker's ``callbacks``, and the test's publisher."""

    sidecar: SidecarHarness
    publisher: BrokerAdapter
    name: str
    kind: str
    url: str

    async def complete(
        self,
        token: str | None,
        body: Any = None,
        *,
        data: bytes | None = None,
        message_id: str | None = None,
    ) -> PublishReceipt:
        """Publish a completion (``token`` None: without the token header)."""
        headers = {} if token is None else {CALLBACK_TOKEN_HEADER: token}
        raw = data if data is not None else json.dumps(body).encode()
        return await publish_when_consumed(self.publisher, raw, headers, message_id)

    async def complete_retrying(self, token: str, body: Any, message_id: str) -> None:
        """Publish a completion, retrying with the same id while the broker is away."""
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.complete(token, body, message_id=message_id)
                return
            except (BrokerUnavailable, PublishRefused):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def counts(self, client: aiohttp.ClientSession) -> dict[str, float]:
        """``saga_callbacks_total`` of this broker by outcome, and every
        ``saga_callback_rejected_total`` by reason."""
        samples = await self.sidecar.metrics(client)
        counts = {}
        for (name, labels), value in samples.items():
            if name == "saga_callbacks_total" and labels.endswith(f"via={self.name}"):
                counts[labels.split(",")[0].removeprefix("outcome=")] = value
            elif name == "saga_callback_rejected_total":
                counts[labels.removeprefix("reason=")] = value
        return counts

    async def wait_counts(
        self, client: aiohttp.ClientSession, expected: dict[str, float], within: float = 20
    ) -> dict[str, float]:
        """Wait until the counts include ``expected``; return them all."""
        deadline = time.monotonic() + within
        while True:
            counts = await self.counts(client)
            seen = {key: counts.get(key) for key in expected}
            if seen == expected or time.monotonic() > deadline:
                assert seen == expected, counts
                return counts
            await asyncio.sleep(0.1)

    async def pending(self) -> int:
        """Messages left in the callbacks queue (RabbitMQ: ready ones) or stream (NATS)."""
        if self.kind == "rabbitmq":
            connection = await aio_pika.connect(self.url, timeout=5)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(self.name, passive=True)
                count: int = queue.declaration_result.message_count or 0
                return count
        client = await nats.connect(self.url, connect_timeout=2, allow_reconnect=False)
        try:
            info = await client.jetstream().stream_info(stream_name(self.name))
            return info.state.messages
        finally:
            await client.close()


Consume = Callable[..., Awaitable[Consuming]]


@pytest.fixture
async def consume(
    kind: str,
    open_broker: OpenBroker,
    rabbitmq_url: str,
    nats_url: str,
    unique_name: str,
    make_sidecar: SidecarFactory,
) -> Consume:
    """``await consume(*sagas, url=None, **sagas_config)``: a sidecar whose one broker (named and
    consuming ``unique_name``) is of the test's ``kind``, and a connected publisher on it.

    Requested first by every test, so the queue or stream is deleted after the sidecar stopped.
    """

    async def start(*sagas: dict[str, Any], url: str | None = None, **config: Any) -> Consuming:
        broker_url = url or {"rabbitmq": rabbitmq_url, "nats": nats_url}[kind]
        publisher = await open_broker(kind, url=broker_url)
        brokers = {unique_name: {"url": broker_url, "callbacks": unique_name}}
        sidecar = await make_sidecar(
            *sagas, sagas={"recovery_interval": "100ms", "brokers": brokers, **config}
        )
        await wait_ready(publisher)
        return Consuming(sidecar, publisher, unique_name, kind, broker_url)

    return start


def success(capture: str) -> dict[str, Any]:
    """A success completion whose result names ``capture``."""
    return {"outcome": "success", "result": {"capture": capture}}


@pytest.mark.parametrize(
    ("outcome", "ends"), [("success", SagaStatus.COMPLETED), ("failure", SagaStatus.COMPENSATED)]
)
async def test_a_completion_message_finishes_the_waiting_step_like_a_callback(
    consume: Consume, client: aiohttp.ClientSession, outcome: str, ends: SagaStatus
) -> None:
    consuming = await consume(awaiting_saga())
    sidecar = consuming.sidecar
    zero = dict.fromkeys(["success", "failure", "heartbeat", *RejectReason], 0.0)
    assert await consuming.counts(client) == zero  # every series exported from the start
    saga_id, token = await waiting_charge(sidecar, client)

    await consuming.complete(token, {"outcome": outcome, "result": {"capture": "c-1"}})

    assert (await sidecar.finished(saga_id, within=20)).status is ends
    detail = await sidecar.runtime.store.get(saga_id)
    charge = next(step for step in detail.steps if step.step_name == "charge")
    assert charge.await_outcome == outcome
    shipped = sidecar.services.calls_to("shipping")
    refunds = [c for c in sidecar.services.calls_to("payments") if c.raw_path.endswith("/refund")]
    if outcome == "success":
        assert detail.instance.response["body"]["charge"] == {"capture": "c-1"}
        assert (len(shipped), len(refunds)) == (1, 0)
    else:
        assert (len(shipped), len(refunds)) == (0, 1)
    await consuming.wait_counts(client, {**zero, outcome: 1.0})
    assert await consuming.pending() == 0


async def test_heartbeat_messages_push_the_await_timeout_forward(
    consume: Consume, client: aiohttp.ClientSession
) -> None:
    consuming = await consume(awaiting_saga(timeout="2s"))
    sidecar = consuming.sidecar
    saga_id, token = await waiting_charge(sidecar, client)
    first = await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    assert first.wait_until is not None

    for beat in range(1, 5):  # 4 s in all: twice the timeout
        await asyncio.sleep(1)
        await consuming.complete(token, {"outcome": "heartbeat"})
        await consuming.wait_counts(client, {"heartbeat": float(beat)}, within=5)
    step = await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    assert step.wait_until is not None and step.wait_until > first.wait_until

    await consuming.complete(token, success("c-1"))
    assert (await sidecar.finished(saga_id, within=20)).status is SagaStatus.COMPLETED


async def test_the_same_completion_twice_is_applied_once_and_another_outcome_is_a_conflict(
    consume: Consume, client: aiohttp.ClientSession
) -> None:
    consuming = await consume(awaiting_saga())
    sidecar = consuming.sidecar
    saga_id, token = await waiting_charge(sidecar, client)

    receipts = [
        await consuming.complete(token, success("c-1"), message_id="done"),
        await consuming.complete(token, success("c-1"), message_id="done"),  # re-sent copy
        await consuming.complete(token, success("c-1"), message_id="done-again"),
    ]
    # NATS drops the copy with the same id itself; RabbitMQ delivers it: applied as SAME.
    delivered = sum(not receipt.duplicate for receipt in receipts)
    assert delivered == (2 if consuming.kind == "nats" else 3)
    assert (await sidecar.finished(saga_id, within=20)).status is SagaStatus.COMPLETED
    await consuming.wait_counts(client, {"success": float(delivered)})

    await consuming.complete(token, {"outcome": "failure"}, message_id="other")
    counts = await consuming.wait_counts(client, {"conflict": 1.0})
    assert counts["success"] == delivered and counts["failure"] == 0

    assert len(sidecar.services.calls_to("shipping")) == 1
    detail = await sidecar.runtime.store.get(saga_id)
    assert detail.instance.response["body"]["charge"] == {"capture": "c-1"}
    assert await consuming.pending() == 0


async def test_poison_messages_are_acknowledged_counted_and_logged_without_the_token(
    consume: Consume, client: aiohttp.ClientSession, captured_logs: list[logging.LogRecord]
) -> None:
    consuming = await consume(awaiting_saga())
    sidecar = consuming.sidecar
    saga_id, token = await waiting_charge(sidecar, client)
    unknown = secrets.token_urlsafe(32)

    await consuming.complete(None, success("c-1"))
    await consuming.complete(unknown, success("c-1"))
    await consuming.complete("not-a-token", success("c-1"))
    await consuming.complete(token, data=b'{"outcome": "succ')
    await consuming.complete(token, {"outcome": "done"})
    rejected = {"missing_token": 1.0, "unknown_token": 2.0, "bad_json": 1.0, "bad_body": 1.0}
    await consuming.wait_counts(client, rejected)

    await asyncio.sleep(2)  # nothing comes back
    counts = await consuming.wait_counts(client, rejected)
    assert counts["success"] == 0
    assert await consuming.pending() == 0
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in captured_logs)
    assert NOT_APPLIED not in logged
    rejections = [r for r in captured_logs if "message rejected" in r.getMessage()]
    assert sorted(getattr(r, "reason", None) for r in rejections) == sorted(
        ["missing_token", "unknown_token", "unknown_token", "bad_json", "bad_body"]
    )
    assert token not in logged and unknown not in logged
    await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)

    await consuming.complete(token, success("c-1"))  # the step still takes its real outcome
    assert (await sidecar.finished(saga_id, within=20)).status is SagaStatus.COMPLETED


def through(proxy: CuttableProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    if parts.password:
        user = f"{parts.username}:{parts.password}@"
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


async def finished_despite_outages(sidecar: SidecarHarness, saga_id: str) -> SagaInstance:
    """Poll the store until the saga ended, riding out errors while its connections recover."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(Exception):
            saga = await sidecar.runtime.store.get_instance(saga_id)
            if saga.status in TERMINAL:
                return saga
        assert time.monotonic() < deadline, "the saga never ended"
        await asyncio.sleep(0.1)


async def test_a_message_arriving_while_the_store_is_down_is_applied_once_it_is_back(
    consume: Consume,
    client: aiohttp.ClientSession,
    database: Database,
    captured_logs: list[logging.LogRecord],
) -> None:
    target = urlsplit(database.url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    try:
        consuming = await consume(awaiting_saga(), store=through(proxy, database.url))
        sidecar = consuming.sidecar
        saga_id, token = await waiting_charge(sidecar, client)

        await proxy.cut()
        await consuming.complete(token, success("c-1"))
        await logged(captured_logs, NOT_APPLIED, times=2)  # tried, and delivered again
        await proxy.restore()

        assert (await finished_despite_outages(sidecar, saga_id)).status is SagaStatus.COMPLETED
        retried = [r for r in captured_logs if NOT_APPLIED in r.getMessage()]
        assert any(getattr(r, "redelivered", False) for r in retried)
        counts = await consuming.wait_counts(client, {"success": 1.0})
        assert sum(counts[reason] for reason in RejectReason) == 0
        assert len(sidecar.services.calls_to("shipping")) == 1
        detail = await sidecar.runtime.store.get(saga_id)
        assert detail.instance.response["body"]["charge"] == {"capture": "c-1"}
        assert await consuming.pending() == 0
    finally:
        await proxy.close()


async def test_a_broker_restarted_while_sagas_wait_loses_nothing_and_applies_nothing_twice(
    consume: Consume,
    client: aiohttp.ClientSession,
    nats_server: Callable[[], NatsServer],
    kind: str,
    captured_logs: list[logging.LogRecord],
) -> None:
    server = nats_server() if kind == "nats" else None
    if server is not None:
        server.start()
    consuming = await consume(awaiting_saga(), url=server.url if server else None)
    sidecar = consuming.sidecar
    waiting: list[tuple[str, str]] = []
    for n in range(4):
        saga_id = await start_order(sidecar, client, f"A-{n}")
        waiting.append((saga_id, await charge_token(sidecar, n)))
        await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    for n in (0, 1):
        await consuming.complete(waiting[n][1], success(f"c-{n}"), message_id=f"done-{n}")
    for n in (0, 1):
        assert (await sidecar.finished(waiting[n][0], within=20)).status is SagaStatus.COMPLETED

    adapter = sidecar.public[BROKERS][consuming.name]
    if server is not None:
        server.kill()
        await wait_down(adapter)
        server.start()
    else:
        # The client reconnects within a second, maybe long before rabbitmqctl returns on a
        # loaded machine: the outage is read from the sidecar's log, not watched for.
        await asyncio.to_thread(close_from_server, f"saga-sidecar broker {consuming.name}")
        await logged(captured_logs, f"broker {consuming.name}: connection lost")
    await wait_ready(adapter, 30)
    await wait_ready(consuming.publisher, 30)

    for n in (2, 3):
        await consuming.complete_retrying(waiting[n][1], success(f"c-{n}"), f"done-{n}")
    # The service re-sends the first completion (it never saw its publish confirmed, say).
    await consuming.complete_retrying(waiting[0][1], success("c-0"), "done-0-again")

    for n, (saga_id, _) in enumerate(waiting):
        assert (await sidecar.finished(saga_id, within=30)).status is SagaStatus.COMPLETED
        detail = await sidecar.runtime.store.get(saga_id)
        assert detail.instance.response["body"]["charge"] == {"capture": f"c-{n}"}
    counts = await consuming.wait_counts(client, {"success": 5.0})  # 4 recorded, 1 the same
    assert sum(counts[reason] for reason in RejectReason) == 0
    shipped = Counter(call.body["order_no"] for call in sidecar.services.calls_to("shipping"))
    assert shipped == Counter({f"A-{n}": 1 for n in range(4)})
    assert await consuming.pending() == 0
