"""Compensations: retried with backoff, bounded, ending in ``failed`` for an operator.

Runs the 3-step ``order`` saga on both stores against real services whose compensation routes
are told to fail; asserts the calls made, in order, and the statuses recorded.
"""

from __future__ import annotations

from saga_runner.states import AttemptKind, SagaStatus
from saga_runner.store import WriteBatch
from sagas.conftest import LEASE_SECONDS, EngineFactory
from sagas.harness import order_saga
from sagas.services import FakeServices, Reply

ORDER = {"order_no": "A-1", "amount": 12.5, "items": [1]}
FORWARD = ["inventory POST /reservations", "payments POST /charges", "shipping POST /shipments"]
UNDO_RESERVE = "inventory DELETE /reservations/inventory-1"


def undo_charge(saga_id: str) -> str:
    """The call line of the charge's compensation."""
    return f"payments POST /charges/by-saga/{saga_id}/refund"


async def test_a_compensation_that_fails_twice_then_succeeds_is_retried_until_done(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("shipping", "POST /shipments", Reply(409))
    services.plan("payments", "POST /charges/*/refund", Reply(500), Reply(503))
    engine = await make_engine()

    run = await engine.run(ORDER)

    saga_id = run.detail.instance.id
    assert services.lines() == [*FORWARD, *[undo_charge(saga_id)] * 3, UNDO_RESERVE]
    assert run.status is SagaStatus.COMPENSATED
    assert run.step_statuses() == {
        "reserve": "compensated",
        "charge": "compensated",
        "ship": "failed",
    }
    refunds = [a for a in run.detail.attempts if a.kind is AttemptKind.COMPENSATION]
    assert [(a.step_order, a.attempt, a.status_code) for a in refunds] == [
        (1, 1, 500),
        (1, 2, 503),
        (1, 3, 201),
        (0, 1, 200),
    ]
    keys = {call.key for call in services.calls_to("payments")[1:]}
    assert keys == {f"{saga_id}:charge:compensation"}
    charge = run.detail.steps[1]
    assert charge.retry_count == 1, "compensation attempts are not action retries"
    assert charge.error is None and charge.next_retry_at is None
    assert charge.result["status"] == 201 and charge.result["body"]["id"] == "payments-1"
    assert charge.compensate_data["method"] == "POST"
    assert (
        charge.compensate_data["url"]
        == services.urls["payments"] + "/" + undo_charge(saga_id).split(" /", 1)[1]
    )
    assert charge.compensate_data["response"]["status"] == 201


async def test_a_compensation_that_never_succeeds_leaves_the_saga_failed_for_an_operator(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("shipping", "POST /shipments", Reply(409))
    services.always("payments", "POST /charges/*/refund", Reply(500, {"error": "ledger down"}))
    engine = await make_engine()

    run = await engine.run(ORDER)

    saga_id = run.detail.instance.id
    assert services.lines() == [*FORWARD, *[undo_charge(saga_id)] * 3]
    assert run.status is SagaStatus.FAILED
    assert run.step_statuses() == {
        "reserve": "succeeded",
        "charge": "compensation_failed",
        "ship": "failed",
    }
    charge = run.detail.steps[1]
    assert charge.error == "compensation of step charge failed: status 500"
    assert charge.compensate_data["response"]["body"] == {"error": "ledger down"}
    assert charge.result["status"] == 201, "the action's answer is kept"
    assert run.detail.instance.failure_reason == "compensation of step charge failed: status 500"
    assert run.detail.instance.failed_step == 2
    assert run.detail.instance.completed_at is None
    assert run.detail.instance.compensated_at is None


async def test_a_non_retryable_answer_to_a_compensation_is_not_retried(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("shipping", "POST /shipments", Reply(409))
    services.always("payments", "POST /charges/*/refund", Reply(400, {"error": "bad refund"}))
    engine = await make_engine()

    run = await engine.run(ORDER)

    assert services.lines() == [*FORWARD, undo_charge(run.detail.instance.id)]
    assert run.status is SagaStatus.FAILED
    assert run.step_statuses()["charge"] == "compensation_failed"


async def test_a_404_from_a_compensation_means_the_effect_is_already_gone(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("payments", "POST /charges", Reply(402, {"error": "card declined"}))
    services.always("inventory", "DELETE /reservations/*", Reply(404, {"error": "no such"}))
    engine = await make_engine()

    run = await engine.run(ORDER)

    assert services.lines() == [*FORWARD[:2], UNDO_RESERVE]
    assert run.status is SagaStatus.COMPENSATED
    assert run.step_statuses()["reserve"] == "compensated"


async def test_an_operator_retry_of_a_failed_compensation_still_renders_it_from_the_action(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("payments", "POST /charges", Reply(402))
    services.plan("inventory", "DELETE /reservations/*", *[Reply(500)] * 3)
    engine = await make_engine()
    failed = await engine.run(ORDER)
    assert failed.status is SagaStatus.FAILED
    store = engine.runtime.store

    claim = await store.claim_one(failed.detail.instance.id, "operator", LEASE_SECONDS)
    assert claim is not None
    await store.write(claim.lease, WriteBatch(saga_status=SagaStatus.COMPENSATING))
    resumed = await engine.runtime.engine.execute(engine.definition, claim.lease)

    assert resumed.status is SagaStatus.COMPENSATED
    assert services.lines()[-1] == UNDO_RESERVE
    assert services.lines().count(UNDO_RESERVE) == 4
    reserve = (await store.get(resumed.id)).steps[0]
    assert reserve.status.value == "compensated"
    assert reserve.result["body"]["id"] == "inventory-1", "the action's answer is kept"


async def test_a_step_without_a_compensation_is_marked_compensated_without_a_call(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    saga = order_saga()
    del saga["steps"][0]["compensation"]
    services.always("shipping", "POST /shipments", Reply(409))
    engine = await make_engine(saga)

    run = await engine.run(ORDER)

    assert services.lines() == [*FORWARD, undo_charge(run.detail.instance.id)]
    assert run.status is SagaStatus.COMPENSATED
    reserve = run.detail.steps[0]
    assert reserve.status.value == "compensated" and reserve.compensate_data is None
    assert not [a for a in run.detail.attempts if a.step_order == 0 and a.kind.value != "action"]
