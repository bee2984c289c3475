"""A callback that races the action's own failed answer (both saga stores, real sockets).

The token of an awaiting step is recorded before its action is called, so the service may call
back while the call is still in flight. A step whose service reported an outcome took effect:
when the action's answer then fails the step (a refusal, or retries that ran out), the saga
compensates it all the same. A callback after the failed answer was recorded gets ``410``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import aiohttp
import pytest
from aiohttp import web
from conftest import Upstream

from saga_runner.records import SagaInstance
from saga_runner.states import SagaStatus, StepStatus
from sagas.awaiting import CALLBACKS_PATH, awaiting_saga, call_back, start_order
from sagas.conftest import SidecarFactory
from sagas.harness import SidecarHarness, with_step
from sagas.services import FakeServices


class Gateway:
    """A payment gateway on a real aiohttp server: it answers every charge ``status`` and,
    when ``outcome`` is set, posts it to the call's ``Saga-Callback`` URL first, inside the
    handler (while the sidecar's call is in flight)."""

    def __init__(self, status: int, outcome: str | None) -> None:
        self.status = status
        self.outcome = outcome
        self.sidecar_url = ""
        self.admin_url = ""
        self.tokens: list[str] = []
        self.callback_answers: list[int] = []
        self.refunds: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/charges", self._charge)
        app.router.add_post("/charges/by-saga/{saga_id}/refund", self._refund)
        return app

    async def _charge(self, request: web.Request) -> web.Response:
        token = request.headers["Saga-Callback"].rsplit("/", 1)[1]
        self.tokens.append(token)
        if self.outcome is not None:
            url = f"{self.sidecar_url}{CALLBACKS_PATH}/{token}"
            body = {"outcome": self.outcome, "result": {"charge": "ch-1"}}
            async with aiohttp.ClientSession() as session, session.post(url, json=body) as answer:
                self.callback_answers.append(answer.status)
        return web.json_response({"error": "refused"}, status=self.status)

    async def _refund(self, request: web.Request) -> web.Response:
        self.refunds.append(request.match_info["saga_id"])
        return web.json_response({"refunded": True})


class Run(NamedTuple):
    """A saga run through the gateway to its end."""

    sidecar: SidecarHarness
    saga_id: str
    saga: SagaInstance


async def _run_through(
    gateway: Gateway,
    saga: dict[str, Any],
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> Run:
    services.urls["payments"] = (await upstream_server(gateway.app())).url
    sidecar = await make_sidecar(saga)
    gateway.sidecar_url = sidecar.url
    gateway.admin_url = sidecar.admin_url
    saga_id = await start_order(sidecar, client)
    return Run(sidecar, saga_id, await sidecar.finished(saga_id, within=10))


async def _run_with(
    gateway: Gateway,
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> str:
    run = await _run_through(
        gateway, awaiting_saga(), make_sidecar, services, client, upstream_server
    )
    assert run.saga.status is SagaStatus.COMPENSATED, run.saga.failure_reason
    assert run.saga.failure_reason == f"step charge: status {gateway.status}"
    return run.saga_id


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(422, "success"), (422, "failure"), (503, "success")],
    ids=["refused-after-success", "refused-after-failure", "retries-out-after-success"],
)
async def test_a_step_whose_service_called_back_during_its_call_is_compensated(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    upstream_server: Callable[..., Awaitable[Upstream]],
    status: int,
    outcome: str,
) -> None:
    gateway = Gateway(status, outcome)
    saga_id = await _run_with(gateway, make_sidecar, services, client, upstream_server)

    assert gateway.callback_answers[0] == 202
    assert set(gateway.callback_answers[1:]) <= {200}  # a retried call's callback: the same
    assert gateway.refunds == [saga_id]
    assert services.lines()[-1] == "inventory DELETE /reservations/inventory-1"
    assert not services.calls_to("shipping")
    async with client.get(f"{gateway.admin_url}/sagas/{saga_id}") as response:
        charge = (await response.json())["steps"][1]
    assert charge["status"] == "compensated"
    assert charge["result"]["status"] == status
    assert charge["await"]["kind"] == "callback"
    assert charge["await"]["outcome"] == outcome
    assert charge["await"]["result"] == {"charge": "ch-1"}
    assert charge["await"]["waiting_since"] is None


async def test_a_compensation_needing_the_refused_answer_is_skipped_and_earlier_steps_undone(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> None:
    # The refund names the charge's id, which the 422 never gave: it can never be built, so
    # the walk goes on and the reservation is still released (the saga ends failed).
    gateway = Gateway(422, "success")
    refund = {"path": "/charges/{{ steps.charge.body.id }}/refund"}
    saga = with_step(awaiting_saga(), "charge", compensation=refund)
    run = await _run_through(gateway, saga, make_sidecar, services, client, upstream_server)

    assert run.saga.status is SagaStatus.FAILED
    assert "compensation of step charge failed: cannot build" in (run.saga.failure_reason or "")
    assert services.lines()[-1] == "inventory DELETE /reservations/inventory-1"
    detail = await run.sidecar.runtime.store.get(run.saga_id)
    statuses = [s.status for s in detail.steps]
    assert statuses[:2] == [StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED]


async def test_a_callback_after_the_failed_answer_gets_410_and_changes_nothing(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> None:
    # A refusal (422) with no callback: the charge never took effect, so it is not refunded.
    gateway = Gateway(422, None)
    run = await _run_through(
        gateway, awaiting_saga(), make_sidecar, services, client, upstream_server
    )
    assert run.saga.status is SagaStatus.COMPENSATED

    token = gateway.tokens[0]
    answer, _, _ = await call_back(client, run.sidecar, token, {"outcome": "success"})
    assert answer == 410
    detail = await run.sidecar.runtime.store.get(run.saga_id)
    charge = next(s for s in detail.steps if s.step_name == "charge")
    assert charge.status is StepStatus.FAILED and charge.await_outcome is None
    assert gateway.refunds == []


async def test_a_late_callback_gets_410_and_an_unknown_outcome_is_still_compensated(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> None:
    # 500 on every attempt: the outcome is unknown, so the charge is refunded anyway.
    gateway = Gateway(500, None)
    saga_id = await _run_with(gateway, make_sidecar, services, client, upstream_server)
    assert gateway.refunds == [saga_id]

    url = f"{gateway.sidecar_url}{CALLBACKS_PATH}/{gateway.tokens[-1]}"
    async with client.post(url, json={"outcome": "success"}) as answer:
        assert answer.status == 410
    assert gateway.refunds == [saga_id]
