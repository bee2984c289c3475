"""How a wait ends besides a callback: heartbeats, the await's timeout, the saga's deadline, an
operator's abort, and a callback that comes before the action's own answer was recorded.

In-process sidecars on real sockets, both saga stores, a recovery loop ticking every 100 ms (the
one query that finds every wait that ended).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from conftest import Upstream

from saga_runner.operations import SagaOperations
from saga_runner.states import SagaStatus, StepStatus
from sagas.awaiting import (
    CALLBACKS_PATH,
    awaiting_saga,
    call_back,
    charge_token,
    start_order,
    step_in,
    waiting_charge,
)
from sagas.conftest import SidecarFactory
from sagas.services import FakeServices, Reply

FAST = {"sagas": {"recovery_interval": "100ms"}}


async def test_heartbeats_push_the_timeout_forward_by_its_length(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga(timeout="1s"), **FAST)
    saga_id = await start_order(sidecar, client)
    token = await charge_token(sidecar)
    first = await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    assert first.wait_until is not None

    for _ in range(4):  # 2 s in all: twice the timeout
        await asyncio.sleep(0.5)
        status, _, body = await call_back(client, sidecar, token, {"outcome": "heartbeat"})
        assert status == 202, body
    step = await step_in(sidecar, saga_id, "charge", StepStatus.WAITING)
    assert step.wait_until is not None and step.wait_until > first.wait_until
    saga = await sidecar.runtime.store.get_instance(saga_id)
    assert saga.next_run_at == step.wait_until

    assert (await call_back(client, sidecar, token, {"outcome": "success"}))[0] == 202
    assert (await sidecar.finished(saga_id)).status is SagaStatus.COMPLETED


async def test_an_await_timeout_compensates_the_accepted_step_and_a_late_callback_gets_410(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga(timeout="300ms"), **FAST)
    saga_id = await start_order(sidecar, client)
    token = await charge_token(sidecar)

    saga = await sidecar.finished(saga_id, within=10)
    assert saga.status is SagaStatus.COMPENSATED
    assert saga.failure_reason == (
        "step charge: no outcome within the await's timeout (outcome unknown)"
    )
    detail = await sidecar.runtime.store.get(saga_id)
    charge = detail.steps[1]
    assert charge.await_outcome == "timeout" and charge.status is StepStatus.COMPENSATED
    assert f"payments POST /charges/by-saga/{saga_id}/refund" in services.lines()
    status, _, body = await call_back(client, sidecar, token, {"outcome": "success"})
    assert status == 410, body
    status, _, _ = await call_back(client, sidecar, token, {"outcome": "heartbeat"})
    assert status == 410


async def test_the_deadline_stops_a_wait_compensates_and_says_so(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga(timeout="1h", deadline="500ms"), **FAST)
    saga_id, token = await waiting_charge(sidecar, client)
    saga = await sidecar.runtime.store.get_instance(saga_id)
    assert saga.deadline_at is not None and saga.next_run_at == saga.deadline_at

    saga = await sidecar.finished(saga_id, within=10)
    assert saga.status is SagaStatus.COMPENSATED
    assert saga.failure_reason == "deadline exceeded"
    assert f"payments POST /charges/by-saga/{saga_id}/refund" in services.lines()
    assert not services.calls_to("shipping")
    assert (await call_back(client, sidecar, token, {"outcome": "success"}))[0] == 410
    samples = await sidecar.metrics(client)
    assert samples[("saga_deadline_exceeded_total", "saga=order")] == 1


async def test_no_forward_step_starts_after_the_deadline(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    services.plan("inventory", "POST /reservations", Reply(201, {"id": "r-1"}, gate=gate))
    sidecar = await make_sidecar(awaiting_saga(deadline="300ms"), **FAST)
    saga_id = await start_order(sidecar, client)
    await services.wait_for_calls(1)
    await asyncio.sleep(0.5)
    gate.set()

    saga = await sidecar.finished(saga_id, within=10)
    assert saga.status is SagaStatus.COMPENSATED
    assert saga.failure_reason == "deadline exceeded"
    assert services.lines() == [
        "inventory POST /reservations",
        "inventory DELETE /reservations/r-1",
    ]


async def test_an_abort_stops_a_wait(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga(), **FAST)
    saga_id, token = await waiting_charge(sidecar, client)

    aborted = await SagaOperations(sidecar.runtime).abort(saga_id, "alice")
    final = await aborted.run()

    assert final.status is SagaStatus.COMPENSATED
    assert final.failure_reason == "aborted by alice"
    assert f"payments POST /charges/by-saga/{saga_id}/refund" in services.lines()
    assert (await call_back(client, sidecar, token, {"outcome": "success"}))[0] == 410


async def test_a_callback_made_before_the_action_answered_is_not_lost(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> None:
    where: dict[str, str] = {}
    answers: list[Any] = []

    async def fast_gateway(request: web.Request) -> web.Response:
        # Calls back (heartbeat, then the outcome) before answering the action itself.
        token = request.headers["Saga-Callback"].rsplit("/", 1)[1]
        url = f"{where['sidecar']}{CALLBACKS_PATH}/{token}"
        async with aiohttp.ClientSession() as session:
            for body in ({"outcome": "heartbeat"}, {"outcome": "success", "result": "early"}):
                async with session.post(url, json=body) as response:
                    answers.append(response.status)
        await asyncio.sleep(0.1)
        return web.json_response({"id": "pay-1"}, status=202)

    app = web.Application()
    app.router.add_post("/charges", fast_gateway)
    services.urls["payments"] = (await upstream_server(app)).url
    # No recovery tick could finish it in time: only the run that parked it can.
    sidecar = await make_sidecar(awaiting_saga(), sagas={"recovery_interval": "1h"})
    where["sidecar"] = sidecar.url
    saga_id = await start_order(sidecar, client)

    saga = await sidecar.finished(saga_id, within=10)
    assert answers == [202, 202]
    assert saga.status is SagaStatus.COMPLETED
    assert saga.response["body"]["charge"] == "early"
    assert len(services.calls_to("shipping")) == 1


async def test_waiting_sagas_and_callbacks_are_counted(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar(awaiting_saga(), **FAST)
    saga_id, token = await waiting_charge(sidecar, client)
    await asyncio.sleep(0.3)  # a recovery tick or two
    samples = await sidecar.metrics(client)
    assert samples[("saga_waiting", "saga=order")] == 1

    await call_back(client, sidecar, token, {"outcome": "heartbeat"})
    await call_back(client, sidecar, token, {"outcome": "success"})
    await call_back(client, sidecar, token, {"outcome": "success"})
    await call_back(client, sidecar, "z" * 43, {"outcome": "success"})
    await sidecar.finished(saga_id)
    await asyncio.sleep(0.3)
    samples = await sidecar.metrics(client)
    assert samples[("saga_waiting", "saga=order")] == 0
    assert samples[("saga_callbacks_total", "outcome=heartbeat,via=http")] == 1
    assert samples[("saga_callbacks_total", "outcome=success,via=http")] == 2
    assert samples[("saga_callback_rejected_total", "reason=unknown_token")] == 1
