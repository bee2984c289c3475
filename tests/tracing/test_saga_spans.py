"""Saga runs and their step calls as spans, on both saga stores, with real sidecar processes.

A compensated saga: the trigger's SERVER span → the run's span ``saga pay`` → one CLIENT span
per action and compensation attempt, each carrying ``saga.id`` (the ``Saga-Id`` answered) and
the step's attributes, each the parent of the call the service received. A saga resumed by
another process after ``kill -9``: its run's span links to the first run's, whose trace context
the instance recorded in its ``started`` event. A step that publishes to RabbitMQ: a PRODUCER
span whose trace context the message carries.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
import yaml
from conftest import Sidecar
from saga_store.helpers import Target

from tracing.conftest import Recorder, new_traceparent
from tracing.otlp import OtlpReceiver, names, one

FAST = {"attempts": 1, "backoff": "10ms"}


def write_saga(directory: Path, doc: dict[str, Any]) -> None:
    (directory / "sagas").mkdir(exist_ok=True)
    text = yaml.safe_dump(doc, sort_keys=False)
    (directory / "sagas" / f"{doc['name']}.yaml").write_text(text, encoding="utf-8")


def call(path: str) -> dict[str, Any]:
    return {"service": "shop", "method": "POST", "path": path, "body": {"at": path}}


def pay_saga() -> dict[str, Any]:
    """Create an order, then charge it: the charge is declined, so the order is cancelled."""
    return {
        "name": "pay",
        "trigger": {"method": "POST", "path": "/api/pay"},
        "mode": "sync",
        "steps": [
            {
                "name": "create-order",
                "action": call("/orders"),
                "compensation": {**call("/orders/cancel"), "retry": FAST},
                "retry": FAST,
            },
            {"name": "charge", "action": call("/charge"), "retry": FAST},
        ],
    }


@pytest.fixture
async def saga_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The store URL of this test's empty saga database."""
    if backend == "sqlite":
        return Target.sqlite(tmp_path / "sagas.db").url
    target: Target = request.getfixturevalue("pg_session_schema")
    await target.truncate()
    return target.url


async def saga_events(client: aiohttp.ClientSession, sidecar: Sidecar, saga_id: str) -> Any:
    async with client.get(f"{sidecar.admin_url}/sagas/{saga_id}") as response:
        assert response.status == 200
        return (await response.json())["events"]


async def test_compensated_saga_is_a_run_span_over_step_and_compensation_spans(
    traced_sidecar: Callable[..., Sidecar],
    receiver: OtlpReceiver,
    recorder: Recorder,
    client: aiohttp.ClientSession,
    saga_store: str,
    tmp_path: Path,
) -> None:
    write_saga(tmp_path, pay_saga())
    sidecar = traced_sidecar({"sagas": {"store": saga_store, "definitions": ["sagas/*.yaml"]}})
    incoming = new_traceparent()

    headers = {"traceparent": incoming.traceparent}
    async with client.post(f"{sidecar.url}/api/pay", json={}, headers=headers) as response:
        assert response.status == 402, await response.text()
        saga_id = response.headers["Saga-Id"]

    wanted = {
        "POST /api/pay",
        "saga pay",
        "create-order action",
        "charge action",
        "create-order compensation",
    }
    await receiver.wait_for(
        lambda spans: {s.name for s in receiver.trace(incoming.trace_id)} >= wanted,
        "the saga's spans",
    )
    spans = receiver.trace(incoming.trace_id)
    server = one(spans, kind="server")
    run = one(spans, name="saga pay")
    assert server.attributes["http.route"] == "/api/pay"
    assert run.parent_span_id == server.span_id
    assert run.attributes["saga.id"] == saga_id
    assert run.attributes["saga.name"] == "pay"
    assert run.attributes["saga.status"] == "compensated"
    assert "saga.resumed" not in run.attributes
    expected = {
        "create-order action": ("/orders", "action", 201),
        "charge action": ("/charge", "action", 402),
        "create-order compensation": ("/orders/cancel", "compensation", 200),
    }
    for name, (path, kind, status) in expected.items():
        step = one(spans, name=name)
        assert step.kind == "client"
        assert step.parent_span_id == run.span_id
        assert step.attributes["saga.id"] == saga_id
        assert step.attributes["saga.name"] == "pay"
        assert step.attributes["saga.step.name"] == name.split()[0]
        assert step.attributes["saga.step.kind"] == kind
        assert step.attributes["saga.step.attempt"] == 1
        assert step.attributes["http.request.method"] == "POST"
        assert step.attributes["http.response.status_code"] == status
        assert step.attributes["url.full"].endswith(path)
        assert step.error is (status >= 400)
        (received,) = recorder.to(path)
        assert names(received.headers["traceparent"], step)
        assert received.headers["saga-id"] == saga_id
    (started,) = [
        e for e in await saga_events(client, sidecar, saga_id) if e["action"] == "started"
    ]
    trace = started["detail"]["trace"]
    assert list(trace) == ["traceparent"]
    assert names(trace["traceparent"], run)


async def test_resumed_saga_run_links_to_the_first_run(
    traced_sidecar: Callable[..., Sidecar],
    receiver: OtlpReceiver,
    recorder: Recorder,
    client: aiohttp.ClientSession,
    saga_store: str,
    tmp_path: Path,
) -> None:
    write_saga(
        tmp_path,
        {
            "name": "slow",
            "trigger": {"method": "POST", "path": "/api/slow"},
            "mode": "async",
            "steps": [{"name": "wait", "action": call("/slow"), "timeout": "60s"}],
        },
    )
    config = {
        "sagas": {
            "store": saga_store,
            "definitions": ["sagas/*.yaml"],
            "lease": "1s",
            "recovery_interval": "200ms",
        }
    }
    first = traced_sidecar(config)
    incoming = new_traceparent()
    headers = {"traceparent": incoming.traceparent}
    async with client.post(f"{first.url}/api/slow", json={}, headers=headers) as response:
        assert response.status == 202
        saga_id = json.loads(await response.text())["saga_id"]
    for _ in range(200):
        if recorder.to("/slow"):
            break
        await asyncio.sleep(0.05)
    first.process.kill()
    first.process.wait(10)

    second = traced_sidecar(config)
    resumed = await receiver.wait_for(
        lambda spans: [
            s for s in spans if s.name == "saga slow" and s.attributes["saga.id"] == saga_id
        ],
        "the resumed run's span",
    )
    (run,) = resumed
    assert run.attributes["saga.resumed"] is True
    assert run.attributes["saga.status"] == "completed"
    assert run.trace_id != incoming.trace_id  # a trace of its own...
    (link,) = run.links  # ...linked to the first run, which the trigger's trace holds
    assert link.trace_id == incoming.trace_id
    assert link.attributes == {"saga.link": "first_run"}
    (started,) = [e for e in await saga_events(client, second, saga_id) if e["action"] == "started"]
    assert names(started["detail"]["trace"]["traceparent"], link)
    await receiver.wait_for(lambda spans: any(s.name == "wait action" for s in spans), "the step")
    step = one(receiver.spans, name="wait action", trace_id=run.trace_id)
    assert step.parent_span_id == run.span_id
    assert step.attributes["saga.step.attempt"] == 2  # the cut-off call was the first
    assert names(recorder.to("/slow")[-1].headers["traceparent"], step)


async def test_a_publishing_step_is_a_producer_span_whose_context_the_message_carries(
    traced_sidecar: Callable[..., Sidecar],
    receiver: OtlpReceiver,
    client: aiohttp.ClientSession,
    saga_store: str,
    tmp_path: Path,
) -> None:
    url = os.environ.get("RABBITMQ_URL") or "amqp://guest:guest@127.0.0.1:5672/"
    queue_name = f"saga-test-{uuid.uuid4().hex[:12]}"
    connection = await aio_pika.connect(url, timeout=5)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, auto_delete=False)
        try:
            publish = {"publish": {"broker": "jobs", "to": queue_name, "body": {"n": 1}}}
            write_saga(
                tmp_path,
                {
                    "name": "notify",
                    "trigger": {"method": "POST", "path": "/api/notify"},
                    "steps": [{"name": "tell", "action": publish}],
                },
            )
            broker = {"url": url, "callbacks": f"{queue_name}-callbacks"}
            sidecar = traced_sidecar(
                {
                    "sagas": {
                        "store": saga_store,
                        "definitions": ["sagas/*.yaml"],
                        "brokers": {"jobs": broker},
                    }
                }
            )
            incoming = new_traceparent()
            headers = {"traceparent": incoming.traceparent}
            async with client.post(f"{sidecar.url}/api/notify", json={}, headers=headers) as sent:
                assert sent.status == 200, await sent.text()
                saga_id = sent.headers["Saga-Id"]
            await receiver.wait_for(
                lambda spans: "tell action" in {s.name for s in receiver.trace(incoming.trace_id)},
                "the publish span",
            )
            spans = receiver.trace(incoming.trace_id)
            tell = one(spans, name="tell action")
            assert tell.kind == "producer"
            assert tell.parent_span_id == one(spans, name="saga notify").span_id
            assert tell.attributes["messaging.destination.name"] == queue_name
            assert tell.attributes["messaging.operation.type"] == "send"
            assert tell.attributes["saga.broker"] == "jobs"
            assert tell.attributes["saga.id"] == saga_id
            assert "http.response.status_code" not in tell.attributes and not tell.error
            message = await queue.get(timeout=5)
            assert message is not None
            await message.ack()
            assert names(str(message.headers["traceparent"]), tell)
        finally:
            await channel.queue_delete(queue_name)
            await channel.queue_delete(f"{queue_name}-callbacks")
