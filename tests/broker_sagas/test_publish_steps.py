"""Steps that publish to a broker: the message a service gets (body, headers, message id, the
callback token), a step that then awaits its outcome, a compensation that publishes, a broker
that refuses the message, and a broker that is down while a saga needs it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from idempotency.cuttable import CuttableProxy
from saga_operator.harness import run_cli
from sagas.awaiting import call_back, start_order, step_in, token_of
from sagas.harness import ORDER, Database, SidecarHarness, order_saga, with_step
from sagas.services import FakeServices

from broker_sagas.conftest import WorkerFactory
from saga_runner.states import SagaStatus, StepStatus

SidecarFactory = Callable[..., Awaitable[SidecarHarness]]


def publishing_saga(to: str) -> dict[str, Any]:
    """The async order saga whose ``ship`` publishes its work to ``to`` on broker ``jobs`` and
    awaits a completion message; its compensation publishes a cancellation there too."""
    saga = order_saga(mode="async")
    ship = next(step for step in saga["steps"] if step["name"] == "ship")
    del ship["action"], ship["compensation"]
    return with_step(
        saga,
        "ship",
        action={
            "publish": {
                "broker": "jobs",
                "to": to,
                "body": {"order_no": "{{ input.order_no }}", "paid": "{{ steps.charge.status }}"},
                "headers": {"X-Order": "{{ input.order_no }}"},
            }
        },
        compensation={
            "publish": {"broker": "jobs", "to": to, "body": {"cancel": "{{ input.order_no }}"}},
            "retry": {"attempts": 50, "backoff": "20ms", "max_backoff": "200ms"},
        },
        **{"await": {"message": {"timeout": "1h"}}},
    )


def brokers(url: str, callbacks: str) -> dict[str, Any]:
    """The sidecar config's ``sagas`` part naming broker ``jobs``."""
    return {"sagas": {"brokers": {"jobs": {"url": url, "callbacks": callbacks}}}}


async def test_a_published_step_carries_its_key_and_token_and_waits_for_its_outcome(
    kind: str,
    broker_url: str,
    unique_name: str,
    worker: WorkerFactory,
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
) -> None:
    warehouse = await worker(kind)
    sidecar = await make_sidecar(publishing_saga(warehouse.to), **brokers(broker_url, unique_name))
    saga_id = await start_order(sidecar, client, "P-1")

    (message,) = await warehouse.received.wait_for(1)
    assert message.message_id == f"{saga_id}:ship:action"
    assert json.loads(message.body) == {"order_no": "P-1", "paid": 201}
    headers = message.headers
    assert headers["idempotency-key"] == message.message_id
    assert headers["saga-id"] == saga_id
    assert headers["x-order"] == "P-1"
    token = headers["saga-callback-token"]
    assert token_of(headers["saga-callback"]) == token and len(token) >= 22
    await step_in(sidecar, saga_id, "ship", StepStatus.WAITING)

    result = {"id": "T-9", "carrier": "post"}
    status, _, _ = await call_back(client, sidecar, token, {"outcome": "success", "result": result})
    assert status == 202
    saga = await sidecar.finished(saga_id)
    assert saga.status is SagaStatus.COMPLETED
    assert saga.response is not None and saga.response["body"]["shipment"] == "T-9"
    detail = await sidecar.runtime.store.get(saga_id)
    ship = next(s for s in detail.steps if s.step_name == "ship")
    assert ship.execute_data is not None and ship.execute_data["publish"] == {
        "broker": "jobs",
        "to": warehouse.to,
    }
    stored = json.dumps([s.execute_data for s in detail.steps])
    assert token not in stored and "saga-callback" not in stored.lower()
    assert len(warehouse.received.deliveries) == 1


async def test_a_failure_outcome_publishes_the_compensation_and_undoes_the_earlier_steps(
    kind: str,
    broker_url: str,
    unique_name: str,
    worker: WorkerFactory,
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
) -> None:
    warehouse = await worker(kind)
    sidecar = await make_sidecar(publishing_saga(warehouse.to), **brokers(broker_url, unique_name))
    saga_id = await start_order(sidecar, client, "P-2")
    (message,) = await warehouse.received.wait_for(1)
    token = message.headers["saga-callback-token"]
    await step_in(sidecar, saga_id, "ship", StepStatus.WAITING)

    status, _, _ = await call_back(client, sidecar, token, {"outcome": "failure"})
    assert status == 202
    saga = await sidecar.finished(saga_id)
    assert saga.status is SagaStatus.COMPENSATED
    _, undo = await warehouse.received.wait_for(2)
    assert undo.message_id == f"{saga_id}:ship:compensation"
    assert json.loads(undo.body) == {"cancel": "P-2"}
    assert "saga-callback-token" not in undo.headers  # only the awaiting action carries one
    detail = await sidecar.runtime.store.get(saga_id)
    assert {s.step_name: s.status for s in detail.steps} == {
        "reserve": StepStatus.COMPENSATED,
        "charge": StepStatus.COMPENSATED,
        "ship": StepStatus.COMPENSATED,
    }


async def test_a_message_the_broker_refuses_fails_the_step_and_compensates(
    kind: str,
    broker_url: str,
    unique_name: str,
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
) -> None:
    nowhere = f"{unique_name}-nobody-consumes"  # no queue bound, no stream for the subject
    saga = publishing_saga(nowhere)
    sidecar = await make_sidecar(saga, **brokers(broker_url, unique_name))
    saga_id = await start_order(sidecar, client, "P-3")

    finished = await sidecar.finished(saga_id, within=15)
    assert finished.status is SagaStatus.COMPENSATED
    detail = await sidecar.runtime.store.get(saga_id)
    ship = next(s for s in detail.steps if s.step_name == "ship")
    assert ship.status is StepStatus.FAILED  # refused: nothing was published, nothing to undo
    assert ship.error is not None and "broker refused" in ship.error


async def test_a_saga_whose_broker_is_down_waits_for_it_without_using_up_its_retries(
    kind: str,
    broker_proxy: tuple[CuttableProxy, str],
    unique_name: str,
    worker: WorkerFactory,
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
) -> None:
    warehouse = await worker(kind)
    proxy, url = broker_proxy
    await proxy.cut()  # the sidecar's way to the broker is down from the start
    sidecar = await make_sidecar(publishing_saga(warehouse.to), **brokers(url, unique_name))
    saga_id = await start_order(sidecar, client, "P-4")
    await asyncio.sleep(2.0)  # far more than 3 attempts' worth of 10-20 ms backoffs
    detail = await sidecar.runtime.store.get(saga_id)
    ship = next(s for s in detail.steps if s.step_name == "ship")
    assert ship.status is StepStatus.RUNNING, ship
    assert ship.retry_count > 3 and "broker unavailable" in (ship.error or "")
    assert {s.step_name: s.status for s in detail.steps}["charge"] is StepStatus.SUCCEEDED

    await proxy.restore()
    (message,) = await warehouse.received.wait_for(1, seconds=30)
    token = message.headers["saga-callback-token"]
    await step_in(sidecar, saga_id, "ship", StepStatus.WAITING, within=10)
    status, _, _ = await call_back(client, sidecar, token, {"outcome": "success"})
    assert status == 202
    assert (await sidecar.finished(saga_id)).status is SagaStatus.COMPLETED


async def test_an_operator_retry_from_the_cli_publishes_the_compensation_the_broker_refused(
    kind: str,
    broker_url: str,
    unique_name: str,
    worker: WorkerFactory,
    make_sidecar: SidecarFactory,
    services: FakeServices,
    database: Database,
    tmp_path: Path,
    client: aiohttp.ClientSession,
) -> None:
    warehouse = await worker(kind)
    undo_to = f"{unique_name}-work-1"  # the next worker's name: nothing consumes it yet
    saga = publishing_saga(warehouse.to)
    ship = next(step for step in saga["steps"] if step["name"] == "ship")
    ship["compensation"]["publish"]["to"] = undo_to
    ship["compensation"]["retry"] = {"attempts": 2, "backoff": "10ms", "max_backoff": "10ms"}
    sidecar = await make_sidecar(saga, **brokers(broker_url, unique_name))
    saga_id = await start_order(sidecar, client, "P-5")
    (message,) = await warehouse.received.wait_for(1)
    await step_in(sidecar, saga_id, "ship", StepStatus.WAITING)
    token = message.headers["saga-callback-token"]
    assert (await call_back(client, sidecar, token, {"outcome": "failure"}))[0] == 202
    assert (await sidecar.finished(saga_id, within=15)).status is SagaStatus.FAILED

    cancellations = await worker(kind)  # the queue or stream exists now
    assert cancellations.to == undo_to
    config = tmp_path / "cli.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "upstream": {"url": services.urls["inventory"]},
                "services": dict(services.urls),
                "sagas": {
                    "store": database.url,
                    "definitions": ["sagas/*.yaml"],
                    **brokers(broker_url, unique_name)["sagas"],
                },
            }
        ),
        "utf-8",
    )
    result = await run_cli("sagas", "retry", saga_id, "--config", str(config))
    assert result.code == 0, result
    assert "ended:" in result.stdout and "compensated" in result.stdout
    (undo,) = await cancellations.received.wait_for(1)
    assert undo.message_id == f"{saga_id}:ship:compensation"
    assert json.loads(undo.body) == {"cancel": "P-5"}


async def test_a_publishing_member_of_a_parallel_group_runs_beside_an_http_call(
    kind: str,
    broker_url: str,
    unique_name: str,
    worker: WorkerFactory,
    make_sidecar: SidecarFactory,
    client: aiohttp.ClientSession,
) -> None:
    warehouse = await worker(kind)
    saga = order_saga(mode="sync")
    reserve, charge, _ship = saga["steps"]
    notify = {
        "name": "notify",
        "action": {"publish": {"broker": "jobs", "to": warehouse.to, "body": {"n": 1}}},
    }
    saga["steps"] = [reserve, {"parallel": [charge, notify]}]
    saga["response"] = {
        "status": 201,
        "body": {"published": "{{ steps.notify.body }}", "status": "{{ steps.notify.status }}"},
    }
    sidecar = await make_sidecar(saga, **brokers(broker_url, unique_name))

    status, headers, body = await sidecar.post(client, "/api/orders", ORDER)
    assert status == 201, body
    saga_id = headers["Saga-Id"]
    message_id = f"{saga_id}:notify:action"
    # RabbitMQ cannot tell a duplicate; JetStream says this one was not.
    duplicate = None if kind == "rabbitmq" else False
    receipt = {"message_id": message_id, "duplicate": duplicate}
    assert body == {"published": receipt, "status": 202}
    (message,) = await warehouse.received.wait_for(1)
    assert message.message_id == message_id and json.loads(message.body) == {"n": 1}
    assert "saga-callback-token" not in message.headers  # the step does not await
