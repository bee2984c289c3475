"""A sync trigger's answer that describes a state about to change is never stored for its key.

"Still running" (202 after the run lost its lease, 409 for a saga another request started) would
otherwise be replayed for the key's whole TTL, even after the saga ended; the client's retry after
the saga ends must get the saga's real outcome.
"""

from __future__ import annotations

import asyncio

import aiohttp

from saga_runner.states import SagaStatus
from sagas.conftest import SidecarFactory
from sagas.harness import ORDER
from sagas.services import FakeServices, Reply


async def test_a_202_after_a_lost_lease_is_not_replayed_once_the_saga_has_finished(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    services.plan("payments", "POST /charges", Reply(201, {"id": "pay-1"}, gate=gate))
    sidecar = await make_sidecar()
    key = {"Idempotency-Key": "order-T-1"}
    first = asyncio.create_task(sidecar.post(client, "/api/orders", ORDER, headers=key))
    await services.wait_for_calls(2)
    saga_id = (await sidecar.only_saga()).instance.id

    retry = {"actor": "alice", "force": True}
    async with client.post(f"{sidecar.admin_url}/sagas/{saga_id}/retry", json=retry) as taken:
        assert taken.status in (200, 202), await taken.text()
    status, _, _ = await first
    assert status == 202, "the run lost its lease to the operator's retry"

    gate.set()
    saga = await sidecar.finished(saga_id)
    assert saga.status is SagaStatus.COMPLETED

    status, headers, body = await sidecar.post(client, "/api/orders", ORDER, headers=key)
    assert status == 201, body
    # Not the 202 replayed from the idempotency store: the saga store's answer (a replay of the
    # saga's outcome, so marked as one).
    assert headers["Saga-Id"] == saga_id and headers["Idempotent-Replayed"] == "true"
    assert body["charge"]["id"] == "payments-1", "the answer of the run that finished it"
