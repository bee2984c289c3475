"""Step calls on the wire: whole answers, declared content types, unreachable services.

Runs through ``SagaEngine`` on both stores against real services (or a port nobody listens on).
"""

from __future__ import annotations

from collections.abc import Callable

from saga_runner.states import SagaStatus
from sagas.conftest import EngineFactory
from sagas.harness import order_saga, with_step
from sagas.services import FakeServices, Reply

ORDER = {"order_no": "A-1", "amount": 3, "items": []}


async def test_an_answer_arriving_in_several_pieces_is_read_whole(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    big = {"id": "res-big", "lines": [f"line {n:06d}" for n in range(20_000)]}
    services.plan("inventory", "POST /reservations", Reply(201, big, pieces=4))
    engine = await make_engine()

    run = await engine.run(ORDER)

    assert run.status is SagaStatus.COMPLETED
    assert run.detail.steps[0].result["body"] == big
    assert services.calls_to("payments")[0].body == {"amount": 3, "reservation": "res-big"}
    assert run.detail.instance.response["body"]["reservation"] == "res-big"


async def test_a_content_type_set_in_the_saga_file_is_sent_as_declared(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    saga = with_step(
        order_saga(), "reserve", action={"headers": {"content-type": "application/vnd.x+json"}}
    )
    engine = await make_engine(saga)

    await engine.run(ORDER)

    assert services.calls[0].headers["content-type"] == "application/vnd.x+json"
    assert services.calls[1].headers["content-type"] == "application/json"


async def test_an_unreachable_service_fails_its_step_without_compensating_it(
    make_engine: EngineFactory, services: FakeServices, free_port: Callable[[], int]
) -> None:
    services.urls["shipping"] = f"http://127.0.0.1:{free_port()}"
    engine = await make_engine()

    run = await engine.run(ORDER)

    saga_id = run.detail.instance.id
    assert services.lines() == [
        "inventory POST /reservations",
        "payments POST /charges",
        f"payments POST /charges/by-saga/{saga_id}/refund",
        "inventory DELETE /reservations/inventory-1",
    ]
    assert run.status is SagaStatus.COMPENSATED
    ship = run.detail.steps[2]
    assert ship.status.value == "failed" and ship.retry_count == 3
    assert ship.result["outcome_unknown"] is False, "nothing was sent"
    assert ship.error is not None and ship.error.startswith("connection failed")
    attempts = [a for a in run.detail.attempts if a.step_order == 2]
    assert [(a.status_code, a.error is not None) for a in attempts] == [(None, True)] * 3
    assert run.detail.instance.response == {"status": 502}
