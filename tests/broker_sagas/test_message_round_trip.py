"""A step that publishes its work and awaits a message, finished by a message: the service
takes the work from its queue or subject and publishes the completion, with the token the work
carried, to the broker's ``callbacks``; nothing goes over HTTP."""

from __future__ import annotations

import json

import aiohttp
from brokers.conftest import OpenBroker, publish_when_consumed, wait_ready
from sagas.awaiting import start_order, step_in

from broker_sagas.conftest import WorkerFactory
from broker_sagas.test_publish_steps import SidecarFactory, brokers, publishing_saga
from saga_runner.brokers.base import CALLBACK_TOKEN_HEADER
from saga_runner.states import SagaStatus, StepStatus


async def test_a_published_step_is_finished_by_a_completion_message(
    kind: str,
    broker_url: str,
    unique_name: str,
    open_broker: OpenBroker,
    worker: WorkerFactory,
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
) -> None:
    warehouse = await worker(kind)
    sidecar = await make_sidecar(publishing_saga(warehouse.to), **brokers(broker_url, unique_name))
    saga_id = await start_order(sidecar, client, "M-1")
    (work,) = await warehouse.received.wait_for(1)
    await step_in(sidecar, saga_id, "ship", StepStatus.WAITING)

    service = await open_broker(kind, callbacks=unique_name, name="warehouse")
    await wait_ready(service)
    result = {"id": "T-7", "carrier": "post"}
    await publish_when_consumed(
        service,
        json.dumps({"outcome": "success", "result": result}).encode(),
        {CALLBACK_TOKEN_HEADER: work.headers[CALLBACK_TOKEN_HEADER]},
        message_id=f"{work.message_id}:done",
    )

    saga = await sidecar.finished(saga_id, within=20)
    assert saga.status is SagaStatus.COMPLETED
    assert saga.response is not None and saga.response["body"]["shipment"] == "T-7"
    samples = await sidecar.metrics(client)
    assert samples[("saga_callbacks_total", "outcome=success,via=jobs")] == 1
    assert samples[("saga_callbacks_total", "outcome=success,via=http")] == 0
    assert len(warehouse.received.deliveries) == 1
