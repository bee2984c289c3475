"""Trigger routes beyond the happy answer: disconnecting clients, bad input, async duplicates.

In-process sidecar on real sockets, both saga stores.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from saga_runner.states import SagaStatus
from sagas.conftest import SidecarFactory
from sagas.harness import ORDER, PROBLEM, Database, order_saga
from sagas.services import FakeServices, Reply


@pytest.mark.parametrize("middleware", ["on", "off"])
async def test_a_client_that_disconnects_does_not_stop_its_saga(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    middleware: str,
) -> None:
    gate = asyncio.Event()
    services.plan("payments", "POST /charges", Reply(201, {"id": "pay-1"}, gate=gate))
    routes = [{"path": "/api/orders", "enabled": False}] if middleware == "off" else []
    sidecar = await make_sidecar(idempotency={"routes": routes})
    key = {"Idempotency-Key": "order-A-1"}
    impatient = asyncio.create_task(sidecar.post(client, "/api/orders", ORDER, headers=key))
    await services.wait_for_calls(2)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    await asyncio.sleep(0.05)

    gate.set()

    detail = await sidecar.only_saga()
    saga = await sidecar.finished(detail.instance.id)
    assert saga.status is SagaStatus.COMPLETED
    assert len(services.lines()) == 3
    # The idempotency record is written just after the saga ends: until then a retry is a 409.
    async with asyncio.timeout(5):
        while True:
            status, headers, body = await sidecar.post(client, "/api/orders", ORDER, headers=key)
            if status != 409:
                break
            assert headers["Retry-After"] == "1"
            await asyncio.sleep(0.05)
    assert status == 201 and headers["Saga-Id"] == saga.id
    assert body["charge"] == {"id": "pay-1"}
    assert len(services.lines()) == 3


async def test_input_the_business_id_cannot_be_rendered_from_gets_422_and_starts_nothing(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    database: Database,
    client: aiohttp.ClientSession,
) -> None:
    sidecar = await make_sidecar()

    status, headers, body = await sidecar.post(client, "/api/orders", {"amount": 1})

    assert status == 422
    assert headers["Content-Type"].startswith(PROBLEM)
    assert "input has no key 'order_no'" in body["detail"]
    assert await database.count("saga_instances") == 0
    assert services.calls == []


async def test_input_a_step_cannot_be_rendered_from_gets_422_and_compensates(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar()

    status, headers, body = await sidecar.post(
        client, "/api/orders", {"order_no": "A-1", "items": []}
    )

    assert status == 422
    assert body["saga_status"] == "compensated" and body["failed_step"] == "charge"
    assert "input has no key 'amount'" in body["detail"]
    assert headers["Saga-Id"] == body["saga_id"]
    assert services.lines() == [
        "inventory POST /reservations",
        "inventory DELETE /reservations/inventory-1",
    ]


@pytest.mark.parametrize("account", ["..", "."])
async def test_a_path_value_that_is_a_dot_segment_gets_422_and_calls_nothing(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    account: str,
) -> None:
    # Sent as /svc/%2E%2E/orders, a Node or WHATWG-normalising service would serve /orders.
    saga = order_saga()
    saga["steps"][0]["action"]["path"] = "/svc/{{ input.account }}/orders"
    sidecar = await make_sidecar(saga)

    status, headers, body = await sidecar.post(client, "/api/orders", {**ORDER, "account": account})

    assert status == 422
    assert headers["Content-Type"].startswith(PROBLEM)
    assert body["saga_status"] == "compensated" and body["failed_step"] == "reserve"
    assert "dot segment" in body["detail"]
    assert services.calls == []


async def test_an_async_duplicate_without_the_middleware_answers_202_for_the_first_saga(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    database: Database,
    client: aiohttp.ClientSession,
) -> None:
    sidecar = await make_sidecar(
        order_saga(mode="async"),
        idempotency={"routes": [{"path": "/api/orders", "enabled": False}]},
    )
    key = {"Idempotency-Key": "order-A-1"}

    first = await sidecar.post(client, "/api/orders", ORDER, headers=key)
    await sidecar.finished(first[2]["saga_id"])
    second = await sidecar.post(client, "/api/orders", ORDER, headers=key)

    assert first[0] == second[0] == 202
    assert second[2] == {"saga_id": first[2]["saga_id"], "saga_status": "completed"}
    assert second[1]["Saga-Id"] == first[1]["Saga-Id"]
    assert await database.count("saga_instances") == 1
    assert len(services.lines()) == 3


async def test_the_same_key_from_another_tenant_starts_its_own_saga(
    make_sidecar: SidecarFactory, database: Database, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(
        idempotency={"routes": [{"path": "/api/orders", "enabled": False}]}
    )

    alice = await sidecar.post(
        client, "/api/orders", ORDER, headers={"Idempotency-Key": "k", "Authorization": "a"}
    )
    bob = await sidecar.post(
        client, "/api/orders", ORDER, headers={"Idempotency-Key": "k", "Authorization": "b"}
    )

    assert alice[0] == bob[0] == 201
    assert alice[1]["Saga-Id"] != bob[1]["Saga-Id"]
    assert await database.count("saga_instances") == 2


async def test_the_quoted_and_bare_forms_of_a_key_name_one_saga_without_the_middleware(
    make_sidecar: SidecarFactory, database: Database, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(
        idempotency={"routes": [{"path": "/api/orders", "enabled": False}]}
    )

    bare = await sidecar.post(client, "/api/orders", ORDER, headers={"Idempotency-Key": "k-1"})
    quoted = await sidecar.post(client, "/api/orders", ORDER, headers={"Idempotency-Key": '"k-1"'})

    assert bare[0] == quoted[0] == 201
    assert bare[1]["Saga-Id"] == quoted[1]["Saga-Id"]
    assert await database.count("saga_instances") == 1


@pytest.mark.parametrize("middleware", ["on", "off"])
@pytest.mark.parametrize(
    "headers",
    [[("Idempotency-Key", "k" * 256)], [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]],
)
async def test_an_invalid_key_gets_400_and_starts_nothing(
    make_sidecar: SidecarFactory,
    database: Database,
    client: aiohttp.ClientSession,
    middleware: str,
    headers: list[tuple[str, str]],
) -> None:
    routes = [{"path": "/api/orders", "enabled": False}] if middleware == "off" else []
    sidecar = await make_sidecar(idempotency={"routes": routes})

    async with client.post(sidecar.url + "/api/orders", json=ORDER, headers=headers) as response:
        assert response.status == 400
        assert response.content_type == PROBLEM

    assert await database.count("saga_instances") == 0
