"""A run stopped mid-call (a replica shutting down or dying) is resumed by another replica.

Two runtimes on the same database play two replicas: the first is cancelled while a call is
in flight, the second claims the saga and finishes it from the records alone.
"""

from __future__ import annotations

import asyncio
import contextlib

from saga_runner.states import SagaStatus
from sagas.conftest import LEASE_SECONDS, EngineFactory
from sagas.harness import EngineHarness
from sagas.services import FakeServices, Reply

ORDER = {"order_no": "A-1", "amount": 12.5, "items": [1]}
TRACE = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


async def stop_mid_call(engine: EngineHarness, services: FakeServices, calls: int) -> str:
    """Start the saga on ``engine`` and cancel its run once ``calls`` calls have arrived."""
    created = await engine.runtime.engine.start(engine.definition, ORDER, TRACE, None)
    assert created.lease is not None
    run = engine.runtime.engine.execute(engine.definition, created.lease, TRACE, input_data=ORDER)
    task = asyncio.create_task(run)
    await services.wait_for_calls(calls)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return created.saga.id


async def resume(engine: EngineHarness, saga_id: str) -> SagaStatus:
    """Claim the saga as another replica would, and drive it to its end."""
    owner = engine.runtime.engine.settings.owner
    claims = await engine.runtime.store.claim_due(owner, LEASE_SECONDS, 10)
    assert [claim.saga.id for claim in claims] == [saga_id], "released at once when stopped"
    final = await engine.runtime.engine.execute(engine.definition, claims[0].lease)
    return final.status


async def test_a_step_cut_off_mid_call_is_resent_with_its_key_by_another_replica(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    gate = asyncio.Event()
    services.plan("payments", "POST /charges", Reply(201, {"id": "never-seen"}, gate=gate))
    first, second = await make_engine(), await make_engine()

    saga_id = await stop_mid_call(first, services, 2)
    status = await resume(second, saga_id)
    gate.set()

    assert status is SagaStatus.COMPLETED
    assert services.lines() == [
        "inventory POST /reservations",
        "payments POST /charges",
        "payments POST /charges",
        "shipping POST /shipments",
    ]
    lost, resent = services.calls_to("payments")
    assert lost.key == resent.key == f"{saga_id}:charge:action"
    assert resent.body == lost.body == {"amount": 12.5, "reservation": "inventory-1"}
    assert resent.headers["traceparent"] == TRACE["traceparent"]
    detail = await second.runtime.store.get(saga_id)
    assert detail.steps[1].retry_count == 2
    assert detail.instance.response["body"]["charge"]["id"] == "payments-1"


async def test_a_compensation_cut_off_mid_call_is_finished_by_another_replica(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    gate = asyncio.Event()
    services.always("shipping", "POST /shipments", Reply(409))
    services.plan("inventory", "DELETE /reservations/*", Reply(500), Reply(200, gate=gate))
    first, second = await make_engine(), await make_engine()

    saga_id = await stop_mid_call(first, services, 6)
    status = await resume(second, saga_id)
    gate.set()

    assert status is SagaStatus.COMPENSATED
    undo = "inventory DELETE /reservations/inventory-1"
    assert services.lines()[3:] == [
        f"payments POST /charges/by-saga/{saga_id}/refund",
        undo,
        undo,
        undo,
    ], "rendered from the action's answer, not from the failed compensation's"
    keys = {call.key for call in services.calls[4:]}
    assert keys == {f"{saga_id}:reserve:compensation"}
    detail = await second.runtime.store.get(saga_id)
    assert [s.status.value for s in detail.steps] == ["compensated", "compensated", "failed"]
