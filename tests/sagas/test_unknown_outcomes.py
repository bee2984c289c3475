"""A step that may have taken effect in ANY attempt is compensated, whatever the last attempt said.

Drives the 3-step ``order`` saga on both stores against real services: the charge's first attempt
times out after the service recorded the charge, and the retries get answers that, alone, would
say "nothing happened" (503) or "refused" (409 while the first attempt is still in flight at an
idempotent service). The charge must be refunded in every case.
"""

from __future__ import annotations

from saga_runner.states import AttemptKind, SagaStatus
from sagas.conftest import EngineFactory
from sagas.harness import order_saga, with_step
from sagas.services import FakeServices, Reply

ORDER = {"order_no": "A-1", "amount": 12.5, "items": [1]}
RESERVE = "inventory POST /reservations"
CHARGE = "payments POST /charges"
UNDO_RESERVE = "inventory DELETE /reservations/inventory-1"
IN_FLIGHT = Reply(
    409,
    {
        "type": "urn:saga-sidecar:problem:idempotency-in-flight",
        "title": "Request in progress",
        "status": 409,
    },
    {"Retry-After": "1"},
)


def refund(saga_id: str) -> str:
    """The call line of the charge's compensation."""
    return f"payments POST /charges/by-saga/{saga_id}/refund"


def slow_charge_saga() -> dict[str, object]:
    """The order saga whose charge times out after 150 ms and is attempted three times."""
    return with_step(
        order_saga(),
        "charge",
        timeout="150ms",
        retry={"attempts": 3, "backoff": "10ms", "max_backoff": "50ms"},
    )


async def test_a_timeout_then_503s_is_still_compensated_because_the_first_attempt_may_have_charged(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan("payments", "POST /charges", Reply(201, delay=0.4), Reply(503), Reply(503))
    engine = await make_engine(slow_charge_saga())

    run = await engine.run(ORDER)

    saga_id = run.detail.instance.id
    assert services.lines() == [RESERVE, CHARGE, CHARGE, CHARGE, refund(saga_id), UNDO_RESERVE]
    assert run.status is SagaStatus.COMPENSATED
    assert run.step_statuses()["charge"] == "compensated"
    charge = run.detail.steps[1]
    assert charge.result["outcome_unknown"] is True
    attempts = [a for a in run.detail.attempts if a.step_order == 1]
    assert [(a.kind, a.status_code) for a in attempts] == [
        (AttemptKind.ACTION, None),
        (AttemptKind.ACTION, 503),
        (AttemptKind.ACTION, 503),
        (AttemptKind.COMPENSATION, 201),
    ]


async def test_a_409_while_the_first_attempt_is_in_flight_means_still_running_not_refused(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan("payments", "POST /charges", Reply(201, delay=0.4), IN_FLIGHT, IN_FLIGHT)
    engine = await make_engine(slow_charge_saga())

    run = await engine.run(ORDER)

    saga_id = run.detail.instance.id
    assert services.lines() == [RESERVE, CHARGE, CHARGE, CHARGE, refund(saga_id), UNDO_RESERVE]
    assert run.status is SagaStatus.COMPENSATED
    assert run.step_statuses()["charge"] == "compensated"
    assert run.detail.steps[1].result["outcome_unknown"] is True
    assert run.detail.instance.response == {"status": 502}, "not the 409 of a refusal"


async def test_a_409_in_flight_followed_by_the_replayed_success_completes_the_saga(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan("payments", "POST /charges", Reply(201, delay=0.4), IN_FLIGHT, Reply(201))
    engine = await make_engine(slow_charge_saga())

    run = await engine.run(ORDER)

    assert run.status is SagaStatus.COMPLETED
    assert [line for line in services.lines() if line == CHARGE] == [CHARGE] * 3


async def test_a_409_on_the_first_attempt_is_a_refusal_and_is_not_compensated(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("payments", "POST /charges", Reply(409, {"error": "duplicate order"}))
    engine = await make_engine(slow_charge_saga())

    run = await engine.run(ORDER)

    assert services.lines() == [RESERVE, CHARGE, UNDO_RESERVE]
    assert run.step_statuses()["charge"] == "failed"
    assert run.detail.steps[1].result["outcome_unknown"] is False


async def test_retry_after_is_honoured_only_up_to_the_steps_max_backoff(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan("payments", "POST /charges", Reply(503, headers={"Retry-After": "60"}))
    saga = with_step(
        order_saga(), "charge", retry={"attempts": 2, "backoff": "10ms", "max_backoff": "300ms"}
    )
    engine = await make_engine(saga)

    run = await engine.run(ORDER)

    assert run.status is SagaStatus.COMPLETED
    first, second = services.calls_to("payments")
    assert 0.0 <= second.at - first.at < 1.0, "Retry-After: 60 is capped at max_backoff (300ms)"
