"""Saga trigger routes on the public listener of an in-process sidecar (real sockets).

The sidecar is built by ``build_apps`` from a config with a ``sagas`` section (default
``memory://`` idempotency store), so requests pass the whole middleware stack before they reach
the trigger handler. Both saga stores are exercised.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from saga_runner.redact import REDACTED
from saga_runner.states import SagaStatus
from sagas.conftest import SidecarFactory
from sagas.harness import ORDER, PROBLEM, Database, order_saga
from sagas.services import FakeServices, Reply


async def test_a_sync_trigger_answers_the_response_template_when_the_saga_completes(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    saga = order_saga()
    saga["response"]["headers"] = {"Location": "/orders/{{ steps.reserve.body.id }}"}
    saga["response"]["body"]["summary"] = "charged {{ steps.charge.body.received.amount }}"
    sidecar = await make_sidecar(saga)

    status, headers, body = await sidecar.post(client, "/api/orders", ORDER)

    assert status == 201
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Location"] == "/orders/inventory-1"
    assert body == {
        "reservation": "inventory-1",
        "charge": {"id": "payments-1", "received": {"amount": 12.5, "reservation": "inventory-1"}},
        "shipment": "shipping-1",
        "summary": "charged 12.5",
    }
    detail = await sidecar.only_saga()
    assert headers["Saga-Id"] == detail.instance.id
    assert detail.instance.status is SagaStatus.COMPLETED


async def test_a_declined_step_answers_its_4xx_as_a_problem_naming_the_saga_and_step(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.always("payments", "POST /charges", Reply(402, {"error": "card declined"}))
    sidecar = await make_sidecar()

    status, headers, body = await sidecar.post(client, "/api/orders", ORDER)

    assert status == 402
    assert headers["Content-Type"].startswith(PROBLEM)
    detail = await sidecar.only_saga()
    assert headers["Saga-Id"] == detail.instance.id
    assert body == {
        "type": "urn:saga-sidecar:problem:saga-compensated",
        "title": "Saga failed",
        "status": 402,
        "detail": "step charge: status 402",
        "saga_id": detail.instance.id,
        "saga_status": "compensated",
        "failed_step": "charge",
        "step_answer": {"status": 402, "body": {"error": "card declined"}},
    }
    assert services.lines()[-1] == "inventory DELETE /reservations/inventory-1"


async def test_the_failing_steps_answer_reaches_the_client_with_its_fields_redacted(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    declined = {"error": "card declined", "card_number": "4111111111111111"}
    services.always("payments", "POST /charges", Reply(402, declined))
    sidecar = await make_sidecar(redact={"fields": ["card_number"]})

    status, _, body = await sidecar.post(client, "/api/orders", ORDER)

    assert status == 402
    assert body["step_answer"] == {
        "status": 402,
        "body": {"error": "card declined", "card_number": REDACTED},
    }


async def test_the_sidecars_own_answers_do_not_announce_python_or_aiohttp(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.always("payments", "POST /charges", Reply(402, {"error": "card declined"}))
    sidecar = await make_sidecar()

    services.always("inventory", "GET /stock", Reply(200, {}, headers={"Server": "inventory/1"}))
    _, headers, _ = await sidecar.post(client, "/api/orders", ORDER)
    async with client.get(f"{sidecar.admin_url}/healthz") as admin:
        assert admin.headers["Server"] == "saga-sidecar"
    async with client.get(f"{sidecar.url}/stock") as proxied:
        assert (proxied.status, proxied.headers["Server"]) == (200, "inventory/1")

    assert headers["Server"] == "saga-sidecar"


@pytest.mark.parametrize(
    ("plan", "saga_status"),
    [
        ({"payments": ("POST /charges", Reply(500))}, "compensated"),
        ({"payments": ("POST /charges*", Reply(500))}, "failed"),
    ],
)
async def test_a_step_failing_with_a_5xx_answers_502(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    plan: dict[str, tuple[str, Reply]],
    saga_status: str,
) -> None:
    for service, (route, reply) in plan.items():
        services.always(service, route, reply)
    sidecar = await make_sidecar()

    status, headers, body = await sidecar.post(client, "/api/orders", ORDER)

    assert status == 502
    assert headers["Content-Type"].startswith(PROBLEM)
    assert (body["status"], body["saga_status"], body["failed_step"]) == (
        502,
        saga_status,
        "charge",
    )
    assert body["type"] == f"urn:saga-sidecar:problem:saga-{saga_status}"
    assert body["step_answer"]["status"] == 500
    assert headers["Saga-Id"] == body["saga_id"]
    assert (await sidecar.only_saga()).instance.status.value == saga_status


async def test_an_async_trigger_answers_202_at_once_and_the_saga_finishes_in_the_background(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    services.plan("payments", "POST /charges", Reply(201, {"id": "pay-1"}, gate=gate))
    sidecar = await make_sidecar(order_saga(mode="async"))

    status, headers, body = await sidecar.post(client, "/api/orders", ORDER)

    assert status == 202
    assert body == {"saga_id": headers["Saga-Id"], "saga_status": "running"}
    await services.wait_for_calls(2)
    store = sidecar.runtime.store
    assert (await store.get_instance(body["saga_id"])).status is SagaStatus.RUNNING
    gate.set()
    saga = await sidecar.finished(body["saga_id"])
    assert saga.status is SagaStatus.COMPLETED
    assert saga.response["body"]["charge"] == {"id": "pay-1"}
    assert len(services.lines()) == 3


@pytest.mark.parametrize(
    "raw",
    [b'{"order_no": ', b"[1, 2]", b'"text"', b"42", b"null", b"\xff\xfe", b"{'a': 1}"],
)
@pytest.mark.parametrize("key", [None, "k-1"])
async def test_a_body_that_is_not_a_json_object_gets_400_and_starts_nothing(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    database: Database,
    client: aiohttp.ClientSession,
    raw: bytes,
    key: str | None,
) -> None:
    sidecar = await make_sidecar()
    headers = {"Idempotency-Key": key} if key else {}

    status, answer_headers, body = await sidecar.post(
        client, "/api/orders", data=raw, headers=headers
    )

    assert status == 400
    assert answer_headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == 400 and "JSON" in body["detail"]
    assert await database.count("saga_instances") == 0
    assert services.calls == []


@pytest.mark.parametrize("middleware", ["on", "off"])
async def test_a_duplicate_trigger_with_the_same_key_starts_one_saga(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    database: Database,
    client: aiohttp.ClientSession,
    middleware: str,
) -> None:
    routes = [{"path": "/api/orders", "enabled": False}] if middleware == "off" else []
    sidecar = await make_sidecar(idempotency={"routes": routes})
    key = {"Idempotency-Key": "order-A-1"}

    first = await sidecar.post(client, "/api/orders", ORDER, headers=key)
    second = await sidecar.post(client, "/api/orders", ORDER, headers=key)

    assert first[0] == second[0] == 201
    assert first[2] == second[2]
    assert first[1]["Saga-Id"] == second[1]["Saga-Id"]
    # A replay either way: from the idempotency store, or (layer off) from the saga store.
    assert "Idempotent-Replayed" not in first[1]
    assert second[1]["Idempotent-Replayed"] == "true"
    assert await database.count("saga_instances") == 1
    assert len(services.lines()) == 3
    other = await sidecar.post(client, "/api/orders", ORDER, headers={"Idempotency-Key": "k2"})
    assert other[0] == 201 and other[1]["Saga-Id"] != first[1]["Saga-Id"]
    assert await database.count("saga_instances") == 2


@pytest.mark.parametrize("middleware", ["on", "off"])
async def test_a_duplicate_while_the_first_is_running_gets_409_and_starts_nothing(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    database: Database,
    client: aiohttp.ClientSession,
    middleware: str,
) -> None:
    gate = asyncio.Event()
    services.plan("inventory", "POST /reservations", Reply(201, {"id": "r-1"}, gate=gate))
    routes = [{"path": "/api/orders", "enabled": False}] if middleware == "off" else []
    sidecar = await make_sidecar(idempotency={"routes": routes})
    key = {"Idempotency-Key": "order-A-1"}
    first = asyncio.create_task(sidecar.post(client, "/api/orders", ORDER, headers=key))
    await services.wait_for_calls(1)

    status, headers, body = await sidecar.post(client, "/api/orders", ORDER, headers=key)

    assert status == 409 and headers["Retry-After"] == "1"
    assert headers["Content-Type"].startswith(PROBLEM)
    gate.set()
    done = await first
    assert done[0] == 201
    if middleware == "off":
        assert headers["Saga-Id"] == body["saga_id"] == done[1]["Saga-Id"]
        assert body["saga_status"] == "running"
    assert await database.count("saga_instances") == 1
    assert len(services.lines()) == 3


async def test_the_trigger_forwards_secrets_to_steps_but_stores_them_redacted(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    database: Database,
    client: aiohttp.ClientSession,
) -> None:
    saga = order_saga()
    reserve = saga["steps"][0]["action"]
    reserve["headers"] = {"Authorization": "{{ headers.authorization }}"}
    reserve["body"]["password"] = "{{ input.password }}"
    sidecar = await make_sidecar(saga)
    secrets = {"Authorization": "Bearer tok-SECRET", "X-Api-Key": "api-SECRET"}

    status, _, _ = await sidecar.post(
        client, "/api/orders", {**ORDER, "password": "pw-SECRET"}, headers=secrets
    )

    assert status == 201
    sent = services.calls[0]
    assert sent.headers["authorization"] == "Bearer tok-SECRET"
    assert sent.body["password"] == "pw-SECRET"
    detail = await sidecar.only_saga()
    assert detail.instance.input["password"] == REDACTED
    assert detail.steps[0].execute_data["headers"]["Authorization"] == REDACTED
    stored = await database.dump()
    assert "SECRET" not in stored


async def test_saga_metrics_count_starts_outcomes_and_step_attempts(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.plan("shipping", "POST /shipments", Reply(201), Reply(409), Reply(409))
    services.plan("payments", "POST /charges", Reply(201), Reply(503), Reply(201), Reply(201))
    services.plan(
        "payments", "POST /charges/*/refund", Reply(200), Reply(500), Reply(500), Reply(500)
    )
    sidecar = await make_sidecar()

    statuses = [(await sidecar.post(client, "/api/orders", ORDER))[0] for _ in range(3)]

    assert statuses == [201, 409, 409]
    samples = await sidecar.metrics(client)
    saga = "saga=order"
    assert samples[("saga_started_total", saga)] == 3
    assert samples[("saga_completed_total", saga)] == 1
    assert samples[("saga_compensated_total", saga)] == 1
    assert samples[("saga_failed_total", saga)] == 1
    assert samples[("saga_in_flight", saga)] == 0
    assert samples[("saga_duration_seconds_count", saga)] == 3

    def attempts(step: str, outcome: str) -> float:
        return samples.get(("saga_step_attempts_total", f"outcome={outcome},{saga},step={step}"), 0)

    assert attempts("reserve", "success") == 3
    assert attempts("charge", "success") == 3
    assert attempts("charge", "retryable") == 1
    assert attempts("ship", "success") == 1
    assert attempts("ship", "permanent") == 2
    assert attempts("charge", "compensation_success") == 1
    assert attempts("charge", "compensation_retryable") == 3
    assert attempts("reserve", "compensation_success") == 1


@pytest.mark.parametrize("status", [200, 204])
async def test_a_response_without_a_body_answers_empty_and_replays_empty(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession, status: int
) -> None:
    sidecar = await make_sidecar(order_saga(response={"status": status}))
    key = {"Idempotency-Key": "no-body"}

    answers = []
    for _ in range(2):
        async with client.post(sidecar.url + "/api/orders", json=ORDER, headers=key) as response:
            answers.append((response.status, response.headers.copy(), await response.read()))

    (first_status, first, first_body), (second_status, second, second_body) = answers
    assert first_status == second_status == status
    assert first_body == second_body == b""
    assert "Content-Type" not in first
    assert second["Idempotent-Replayed"] == "true"
    assert second["Saga-Id"] == first["Saga-Id"]
