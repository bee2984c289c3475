"""What the store records while a saga runs: written before each call, step keys, redaction.

The upstream holds a step's call open (a gate) so the test can read the records at the moment
the call arrives: the state that announces a call must already be written then.
"""

from __future__ import annotations

import asyncio
from typing import Any

from saga_runner.records import SagaDetail
from saga_runner.redact import REDACTED
from saga_runner.states import SagaStatus
from sagas.conftest import EngineFactory
from sagas.harness import Database, order_saga, with_step
from sagas.services import FakeServices, Reply

ORDER = {"order_no": "A-7", "amount": 99, "items": ["book"]}


async def start_held(
    make_engine: EngineFactory, services: FakeServices, service: str, route: str
) -> tuple[Any, asyncio.Event, asyncio.Task[Any], str]:
    """Start the order saga with the first call to ``route`` on ``service`` held open."""
    gate = asyncio.Event()
    services.plan(service, route, Reply(201, {"id": f"{service}-held"}, gate=gate))
    engine = await make_engine()
    created = await engine.runtime.engine.start(engine.definition, ORDER, {}, None)
    assert created.lease is not None
    task = asyncio.create_task(engine.runtime.engine.execute(engine.definition, created.lease, {}))
    return engine, gate, task, created.saga.id


def request_record(url: str, saga_id: str, step: str, kind: str, body: Any) -> dict[str, Any]:
    """The ``execute_data``/``compensate_data`` expected for a call without extra headers."""
    return {
        "method": "POST",
        "url": url,
        "headers": {"Idempotency-Key": f"{saga_id}:{step}:{kind}", "Saga-Id": saga_id},
        "body": body,
    }


async def test_each_step_is_recorded_running_with_its_request_before_its_call_is_made(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    engine, gate, task, saga_id = await start_held(
        make_engine, services, "payments", "POST /charges"
    )
    await services.wait_for_calls(2)

    during = await engine.runtime.store.get(saga_id)
    assert during.instance.status is SagaStatus.RUNNING and during.instance.current_step == 1
    reserve, charge, ship = during.steps
    assert (reserve.status.value, charge.status.value, ship.status.value) == (
        "succeeded",
        "running",
        "pending",
    )
    assert charge.execute_data == request_record(
        services.urls["payments"] + "/charges",
        saga_id,
        "charge",
        "action",
        {"amount": 99, "reservation": "inventory-1"},
    )
    assert charge.retry_count == 1 and charge.result is None
    assert ship.execute_data is None and ship.retry_count == 0
    assert [a.step_order for a in during.attempts] == [0], "an attempt is recorded after it"
    assert reserve.result["body"] == {
        "id": "inventory-1",
        "received": {"order_no": "A-7", "items": ["book"]},
    }

    gate.set()
    final = await task
    assert final.status is SagaStatus.COMPLETED
    detail = await engine.runtime.store.get(saga_id)
    assert_completed_rows(detail)


def assert_completed_rows(detail: SagaDetail) -> None:
    """Every row of a completed run: statuses, counts and timestamps in order."""
    saga = detail.instance
    assert saga.status is SagaStatus.COMPLETED and saga.current_step == 2
    assert saga.business_type == "order" and saga.business_id == "A-7"
    assert saga.input == ORDER and saga.mode == "sync"
    assert saga.completed_at == saga.updated_at and saga.compensated_at is None
    assert saga.owner is None and saga.lease_expires_at is None
    assert [s.status.value for s in detail.steps] == ["succeeded"] * 3
    assert [s.step_order for s in detail.steps] == [0, 1, 2]
    assert [(s.retry_count, s.max_retry_count) for s in detail.steps] == [(1, 3)] * 3
    assert [s.result["status"] for s in detail.steps] == [201, 201, 201]
    assert detail.steps[1].result["body"] == {"id": "payments-held"}
    assert all(s.compensate_data is None and s.error is None for s in detail.steps)
    stamps = [saga.created_at, *(s.updated_at for s in detail.steps), saga.completed_at]
    assert stamps == sorted(stamps)
    assert all(s.created_at == saga.created_at for s in detail.steps)
    attempts = [(a.step_order, a.kind.value, a.attempt, a.status_code) for a in detail.attempts]
    assert attempts == [(0, "action", 1, 201), (1, "action", 1, 201), (2, "action", 1, 201)]
    assert [e.action for e in detail.events] == ["started"]


async def test_a_compensation_is_recorded_compensating_with_its_request_before_its_call(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.always("shipping", "POST /shipments", Reply(409, {"error": "no courier"}))
    engine, gate, task, saga_id = await start_held(
        make_engine, services, "payments", "POST /charges/*/refund"
    )
    await services.wait_for_calls(4)

    during = await engine.runtime.store.get(saga_id)
    assert during.instance.status is SagaStatus.COMPENSATING
    assert during.instance.failed_step == 2
    assert during.instance.failure_reason == "step ship: status 409"
    assert [s.status.value for s in during.steps] == ["succeeded", "compensating", "failed"]
    refund_url = f"{services.urls['payments']}/charges/by-saga/{saga_id}/refund"
    assert during.steps[1].compensate_data == request_record(
        refund_url, saga_id, "charge", "compensation", None
    )
    assert during.steps[2].result["body"] == {"error": "no courier"}

    gate.set()
    final = await task
    assert final.status is SagaStatus.COMPENSATED
    detail = await engine.runtime.store.get(saga_id)
    saga = detail.instance
    assert saga.compensated_at == saga.updated_at and saga.completed_at is None
    assert [s.status.value for s in detail.steps] == ["compensated", "compensated", "failed"]
    assert detail.steps[1].compensate_data["response"]["body"] == {"id": "payments-held"}
    assert detail.steps[0].compensate_data["url"] == (
        services.urls["inventory"] + "/reservations/inventory-1"
    )
    assert detail.steps[0].compensate_data["method"] == "DELETE"


async def test_every_call_carries_its_step_key_and_the_saga_id(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    services.plan("payments", "POST /charges", Reply(503))
    services.always("shipping", "POST /shipments", Reply(409))
    engine = await make_engine()

    run = await engine.run(ORDER, headers={"traceparent": "00-abc-def-01", "X-Other": "no"})

    saga_id = run.detail.instance.id
    keys = [(call.service, call.key) for call in services.calls]
    assert keys == [
        ("inventory", f"{saga_id}:reserve:action"),
        ("payments", f"{saga_id}:charge:action"),
        ("payments", f"{saga_id}:charge:action"),
        ("shipping", f"{saga_id}:ship:action"),
        ("payments", f"{saga_id}:charge:compensation"),
        ("inventory", f"{saga_id}:reserve:compensation"),
    ]
    assert {call.headers["saga-id"] for call in services.calls} == {saga_id}
    assert {call.headers["traceparent"] for call in services.calls} == {"00-abc-def-01"}
    assert not any("x-other" in call.headers for call in services.calls)


SECRETS = ("Bearer tok-SECRET-1", "key-SECRET-2", "4111111111111111", "cvv-SECRET-3")


def secret_saga() -> dict[str, Any]:
    """The order saga whose reserve step forwards credentials and card data."""
    return with_step(
        order_saga(),
        "reserve",
        action={
            "headers": {
                "Authorization": "{{ headers.authorization }}",
                "X-Api-Key": "{{ headers.x-api-key }}",
            },
            "body": {
                "order_no": "{{ input.order_no }}",
                "card_number": "{{ input.card.card_number }}",
                "card": {"cvv": "{{ input.card.cvv }}"},
            },
        },
    )


async def test_credentials_and_redacted_fields_are_sent_upstream_but_stored_nowhere(
    make_engine: EngineFactory, services: FakeServices, database: Database
) -> None:
    services.always("shipping", "POST /shipments", Reply(409))
    engine = await make_engine(secret_saga(), redact=(("X-Api-Key",), ("card_number", "cvv")))
    order = {**ORDER, "card": {"card_number": SECRETS[2], "cvv": SECRETS[3]}}

    run = await engine.run(
        order, headers={"Authorization": SECRETS[0], "X-Api-Key": SECRETS[1], "Cookie": "c=1"}
    )

    assert run.status is SagaStatus.COMPENSATED
    sent = services.calls[0]
    assert sent.headers["authorization"] == SECRETS[0]
    assert sent.headers["x-api-key"] == SECRETS[1]
    assert sent.body["card_number"] == SECRETS[2] and sent.body["card"]["cvv"] == SECRETS[3]
    reserve = run.detail.steps[0]
    assert reserve.execute_data["headers"]["Authorization"] == REDACTED
    assert reserve.execute_data["headers"]["X-Api-Key"] == REDACTED
    assert reserve.execute_data["body"]["card_number"] == REDACTED
    assert reserve.execute_data["body"]["card"] == {"cvv": REDACTED}
    assert reserve.result["body"]["received"]["card_number"] == REDACTED
    assert run.detail.instance.input["card"] == {"card_number": REDACTED, "cvv": REDACTED}
    started = run.detail.events[0].detail["headers"]
    assert started["authorization"] == started["x-api-key"] == started["cookie"] == REDACTED
    stored = await database.dump()
    assert "c=1" not in stored
    for secret in SECRETS:
        assert secret not in stored
