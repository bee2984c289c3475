"""The forward phase of a saga and its fallback: every step once, retries, and compensations.

Each test drives the 3-step ``order`` saga (reserve → charge → ship) through ``SagaEngine`` on a
real store (SQLite and PostgreSQL) against real upstream services, and asserts both what the
services received (in order) and what the store recorded.
"""

from __future__ import annotations

import asyncio

import pytest

from saga_runner.records import SagaDetail
from saga_runner.states import AttemptKind, SagaStatus
from sagas.conftest import EngineFactory
from sagas.harness import EngineHarness, order_saga, with_step
from sagas.services import FakeServices, Reply

ORDER = {"order_no": "A-1", "amount": 12.5, "items": [{"sku": "X", "qty": 2}]}
RESERVE = "inventory POST /reservations"
CHARGE = "payments POST /charges"
SHIP = "shipping POST /shipments"
FAILING = {
    "reserve": ("inventory", "POST /reservations"),
    "charge": ("payments", "POST /charges"),
    "ship": ("shipping", "POST /shipments"),
}


async def test_happy_path_calls_each_step_once_in_order_and_completes(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    engine = await make_engine()

    run = await engine.run(ORDER)

    assert services.lines() == [RESERVE, CHARGE, SHIP]
    assert run.status is SagaStatus.COMPLETED
    assert run.step_statuses() == {
        "reserve": "succeeded",
        "charge": "succeeded",
        "ship": "succeeded",
    }
    saga = run.detail.instance
    assert saga.response == {
        "status": 201,
        "headers": {},
        "body": {
            "reservation": "inventory-1",
            "charge": {
                "id": "payments-1",
                "received": {"amount": 12.5, "reservation": "inventory-1"},
            },
            "shipment": "shipping-1",
        },
    }
    assert saga.completed_at is not None and saga.compensated_at is None
    assert saga.failed_step is None and saga.failure_reason is None
    assert saga.owner is None, "the lease is released when the run ends"


@pytest.mark.parametrize(
    ("failing", "expected_calls", "compensated"),
    [
        ("reserve", [RESERVE], []),
        (
            "charge",
            [RESERVE, CHARGE, "inventory DELETE /reservations/inventory-1"],
            ["reserve"],
        ),
        (
            "ship",
            [
                RESERVE,
                CHARGE,
                SHIP,
                "payments POST /charges/by-saga/{saga}/refund",
                "inventory DELETE /reservations/inventory-1",
            ],
            ["reserve", "charge"],
        ),
    ],
)
async def test_a_failing_step_compensates_exactly_the_completed_steps_in_reverse_order(
    make_engine: EngineFactory,
    services: FakeServices,
    failing: str,
    expected_calls: list[str],
    compensated: list[str],
) -> None:
    service, route = FAILING[failing]
    services.always(service, route, Reply(409, {"error": "conflict"}))
    engine = await make_engine()

    run = await engine.run(ORDER)

    saga = run.detail.instance
    assert services.lines() == [line.format(saga=saga.id) for line in expected_calls]
    assert run.status is SagaStatus.COMPENSATED
    order = ["reserve", "charge", "ship"]
    failed_at = order.index(failing)
    assert run.step_statuses() == {
        name: (
            "compensated" if name in compensated else "failed" if index == failed_at else "pending"
        )
        for index, name in enumerate(order)
    }
    assert saga.failed_step == failed_at
    assert saga.failure_reason == f"step {failing}: status 409"
    assert saga.response == {"status": 409}
    assert saga.compensated_at is not None and saga.completed_at is None


async def test_a_transient_503_is_retried_with_the_same_key_and_counted(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan("payments", "POST /charges", Reply(503, {"error": "busy"}))
    engine = await make_engine()

    run = await engine.run(ORDER)

    assert run.status is SagaStatus.COMPLETED
    assert services.lines() == [RESERVE, CHARGE, CHARGE, SHIP]
    first, second = services.calls_to("payments")
    assert first.key == second.key == f"{run.detail.instance.id}:charge:action"
    charge = run.detail.steps[1]
    assert (charge.retry_count, charge.max_retry_count) == (2, 3)
    assert charge.next_retry_at is None and charge.error is None
    attempts = [(a.attempt, a.status_code) for a in run.detail.attempts if a.step_order == 1]
    assert attempts == [(1, 503), (2, 201)]
    assert [a.retry_count for a in run.detail.steps] == [1, 2, 1]


async def test_retry_after_on_a_429_is_honoured_and_persisted_before_sleeping(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan(
        "payments", "POST /charges", Reply(429, {"error": "slow down"}, {"Retry-After": "1"})
    )
    engine = await make_engine(with_step(order_saga(), "charge", retry={"max_backoff": "2s"}))
    created = await engine.runtime.engine.start(engine.definition, ORDER, {}, None)
    assert created.lease is not None
    task = asyncio.create_task(engine.runtime.engine.execute(engine.definition, created.lease, {}))
    await services.wait_for_calls(2)

    waiting = await wait_for_step_error(engine, created.saga.id, 1)
    charge = waiting.steps[1]
    assert charge.status.value == "running" and charge.error == "status 429"
    assert charge.next_retry_at is not None
    planned = (charge.next_retry_at - charge.updated_at).total_seconds()
    assert 0.75 < planned <= 1.0
    assert waiting.instance.next_run_at == charge.next_retry_at
    assert len(services.lines()) == 2

    assert (await task).status is SagaStatus.COMPLETED
    first, second = services.calls_to("payments")
    assert second.at - first.at >= 0.95, "Retry-After: 1 beats the 10ms backoff"


async def wait_for_step_error(engine: EngineHarness, saga_id: str, order: int) -> SagaDetail:
    """Read the saga until step ``order`` records an error (a failed attempt)."""
    async with asyncio.timeout(5):
        while True:
            detail = await engine.runtime.store.get(saga_id)
            if detail.steps[order].error is not None:
                return detail
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("status", [400, 402, 409, 422])
async def test_a_non_retryable_4xx_fails_the_step_at_once(
    make_engine: EngineFactory, services: FakeServices, status: int
) -> None:
    services.always("payments", "POST /charges", Reply(status, {"error": "declined"}))
    engine = await make_engine()

    run = await engine.run(ORDER)

    assert services.lines() == [RESERVE, CHARGE, "inventory DELETE /reservations/inventory-1"]
    assert run.status is SagaStatus.COMPENSATED
    charge = run.detail.steps[1]
    assert charge.status.value == "failed" and charge.retry_count == 1
    assert charge.result["status"] == status and charge.result["outcome_unknown"] is False
    assert charge.result["body"] == {"error": "declined"}
    assert run.detail.instance.response == {"status": status}


async def test_a_timed_out_step_is_retried_then_compensated_because_its_outcome_is_unknown(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("payments", "POST /charges", Reply(201, delay=0.6))
    saga = with_step(order_saga(), "charge", timeout="150ms", retry={"attempts": 2})
    engine = await make_engine(saga)

    run = await engine.run(ORDER)

    saga_id = run.detail.instance.id
    assert services.lines() == [
        RESERVE,
        CHARGE,
        CHARGE,
        f"payments POST /charges/by-saga/{saga_id}/refund",
        "inventory DELETE /reservations/inventory-1",
    ]
    assert run.status is SagaStatus.COMPENSATED
    assert run.step_statuses() == {
        "reserve": "compensated",
        "charge": "compensated",
        "ship": "pending",
    }
    charge = run.detail.steps[1]
    assert charge.result["outcome_unknown"] is True
    assert charge.compensate_data["url"].endswith(f"/charges/by-saga/{saga_id}/refund")
    timeouts = [
        a for a in run.detail.attempts if a.step_order == 1 and a.kind is AttemptKind.ACTION
    ]
    assert [(a.status_code, a.error) for a in timeouts] == [(None, "timed out after 0.15s")] * 2
    assert all(a.duration_ms < 550 for a in timeouts), "the answer was not waited for"
    assert run.detail.instance.response == {"status": 502}


async def test_a_5xx_after_every_retry_is_compensated_like_a_succeeded_step(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("payments", "POST /charges", Reply(500, {"error": "boom"}))
    engine = await make_engine()

    run = await engine.run(ORDER)

    saga_id = run.detail.instance.id
    assert services.lines() == [
        RESERVE,
        CHARGE,
        CHARGE,
        CHARGE,
        f"payments POST /charges/by-saga/{saga_id}/refund",
        "inventory DELETE /reservations/inventory-1",
    ]
    assert run.status is SagaStatus.COMPENSATED
    assert run.detail.steps[1].status.value == "compensated"
    assert run.detail.steps[1].retry_count == 3


async def test_a_503_after_every_retry_is_known_unprocessed_and_not_compensated(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("payments", "POST /charges", Reply(503, {"error": "down"}))
    engine = await make_engine()

    run = await engine.run(ORDER)

    assert services.lines() == [
        RESERVE,
        CHARGE,
        CHARGE,
        CHARGE,
        "inventory DELETE /reservations/inventory-1",
    ]
    assert run.status is SagaStatus.COMPENSATED
    assert run.step_statuses()["charge"] == "failed"
    assert run.detail.instance.failure_reason == "step charge: status 503"


async def test_an_unknown_outcome_whose_compensation_needs_the_missing_answer_still_undoes_the_rest(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("shipping", "POST /shipments", Reply(500, {"error": "boom"}))
    engine = await make_engine()

    run = await engine.run(ORDER)

    calls = services.lines()
    assert calls[:5] == [RESERVE, CHARGE, SHIP, SHIP, SHIP]
    assert not any(line.startswith("shipping") for line in calls[5:]), "no guessed compensation"
    assert [line.split()[0] for line in calls[5:]] == ["payments", "inventory"], calls
    assert run.status is SagaStatus.FAILED
    ship = run.detail.steps[2]
    assert ship.status.value == "compensation_failed"
    assert ship.error is not None and "steps.ship.body has no key 'id'" in ship.error
    assert ship.result["outcome_unknown"] is True
    assert [s.status.value for s in run.detail.steps[:2]] == ["compensated", "compensated"]
    assert "ship" in (run.detail.instance.failure_reason or "")
