"""``saga_step_duration_seconds{saga,step,kind}``: every step call is timed, action and
compensation apart, labelled only by the declared saga and its steps.

An in-process sidecar (real sockets) runs the order saga against the fake services; the charge
answers late and the shipment is refused, so the saga is compensated.
"""

from __future__ import annotations

import aiohttp

from sagas.conftest import SidecarFactory
from sagas.harness import ORDER
from sagas.services import FakeServices, Reply

CHARGE_DELAY = 0.2


async def test_every_step_call_is_timed_by_saga_step_and_kind(
    make_sidecar: SidecarFactory, services: FakeServices, client: aiohttp.ClientSession
) -> None:
    services.plan("payments", "POST /charges", Reply(201, delay=CHARGE_DELAY))
    services.plan("shipping", "POST /shipments", Reply(409))
    sidecar = await make_sidecar()

    status, _, body = await sidecar.post(client, "/api/orders", ORDER)

    assert status == 409, body
    samples = await sidecar.metrics(client)

    def timed(step: str, kind: str, part: str = "count") -> float:
        labels = f"kind={kind},saga=order,step={step}"
        return samples.get((f"saga_step_duration_seconds_{part}", labels), 0.0)

    calls = {
        (step, kind): timed(step, kind)
        for step in ("reserve", "charge", "ship")
        for kind in ("action", "compensation")
    }
    assert calls == {
        ("reserve", "action"): 1,
        ("charge", "action"): 1,
        ("ship", "action"): 1,
        ("reserve", "compensation"): 1,
        ("charge", "compensation"): 1,
        ("ship", "compensation"): 0,  # a refused step took no effect: nothing to undo
    }
    assert CHARGE_DELAY <= timed("charge", "action", "sum") < CHARGE_DELAY + 1
    assert 0 < timed("reserve", "action", "sum") < CHARGE_DELAY
    bucket = "saga_step_duration_seconds_bucket"
    assert samples[(bucket, "kind=action,le=0.1,saga=order,step=charge")] == 0
    assert samples[(bucket, "kind=action,le=+Inf,saga=order,step=charge")] == 1


async def test_every_declared_saga_is_exported_at_zero_before_its_first_instance(
    make_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar = await make_sidecar()

    samples = await sidecar.metrics(client)

    for family in (
        "saga_started_total",
        "saga_completed_total",
        "saga_compensated_total",
        "saga_failed_total",
        "saga_deadline_exceeded_total",
        "saga_in_flight",
        "saga_waiting",
    ):
        assert samples.get((family, "saga=order")) == 0.0, family
