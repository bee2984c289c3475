"""A callback that races the action's own failed answer (both saga stores, real sockets).

The token of an awaiting step is recorded before its action is called, so the service may call
back while the call is still in flight. A step whose service reported an outcome took effect:
when the action's answer then fails the step (a refusal, or retries that ran out), the saga
compensates it all the same. A callback after the failed answer was recorded gets ``410``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from conftest import Upstream

from saga_runner.states import SagaStatus, StepStatus
from sagas.awaiting import CALLBACKS_PATH, awaiting_saga, call_back, start_order
from sagas.conftest import SidecarFactory
from sagas.services import FakeServices


class Gateway:
    """A payment gateway on a real aiohttp server: it answers every charge ``status`` and,
    when ``outcome`` is set, posts it to the call's ``Saga-Callback`` URL first, inside the
    handler (while the sidecar's call is in flight)."""

    def __init__(self, status: int, outcome: str | None) -> None:
        self.status = status
        self.outcome = outcome
        self.sidecar_url = ""
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


async def _run_with(
    gateway: Gateway,
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> str:
    services.urls["payments"] = (await upstream_server(gateway.app())).url
    sidecar = await make_sidecar(awaiting_saga())
    gateway.sidecar_url = sidecar.url
    saga_id = await start_order(sidecar, client)
    saga = await sidecar.finished(saga_id, within=10)
    assert saga.status is SagaStatus.COMPENSATED, saga.failure_reason
    return saga_id


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


async def test_a_callback_after_the_failed_answer_gets_410_and_changes_nothing(
    make_sidecar: SidecarFactory,
    services: FakeServices,
    client: aiohttp.ClientSession,
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> None:
    # A refusal (422) with no callback: the charge never took effect, so it is not refunded.
    gateway = Gateway(422, None)
    services.urls["payments"] = (await upstream_server(gateway.app())).url
    sidecar = await make_sidecar(awaiting_saga())
    gateway.sidecar_url = sidecar.url
    saga_id = await start_order(sidecar, client)
    assert (await sidecar.finished(saga_id, within=10)).status is SagaStatus.COMPENSATED

    answer, _, _ = await call_back(client, sidecar, gateway.tokens[0], {"outcome": "success"})
    assert answer == 410
    detail = await sidecar.runtime.store.get(saga_id)
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
