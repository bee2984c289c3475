"""A compensation's attempts are counted across resumes: a restart grants no fresh set.

Two runtimes on the same database play two replicas: the first is cut off while a compensation
attempt is in flight, the second resumes the saga; the compensation's ``retry.attempts`` (3 in
the test saga) bounds the calls of both runs together.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from durability.conftest import eventually

from saga_runner.operations import SagaOperations
from saga_runner.records import SagaDetail
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from sagas.conftest import LEASE_SECONDS, EngineFactory
from sagas.harness import ORDER, EngineHarness, order_saga
from sagas.services import FakeServices, Reply
from sagas.test_engine_resume import resume, stop_mid_call

SLOW_UNDO = {"attempts": 3, "backoff": "1s", "multiplier": 1, "max_backoff": "1s"}

UNDO = "inventory DELETE /reservations/inventory-1"


def undo_rows(detail: SagaDetail) -> list[tuple[int, int | None]]:
    """The first step's compensation attempts as stored: (attempt, status code)."""
    return [
        (a.attempt, a.status_code)
        for a in detail.attempts
        if a.kind is AttemptKind.COMPENSATION and a.step_order == 0
    ]


async def test_a_resumed_compensation_makes_only_the_attempts_left(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    gate = asyncio.Event()
    services.always("shipping", "POST /shipments", Reply(409))
    services.plan(
        "inventory", "DELETE /reservations/*", Reply(500), Reply(500, gate=gate), then=Reply(500)
    )
    first, second = await make_engine(), await make_engine()

    saga_id = await stop_mid_call(first, services, 6)
    status = await resume(second, saga_id)
    gate.set()

    assert status is SagaStatus.FAILED
    assert services.lines().count(UNDO) == 3, "attempt 3 is the last, whichever run makes it"
    detail = await second.runtime.store.get(saga_id)
    assert detail.steps[0].status is StepStatus.COMPENSATION_FAILED
    assert undo_rows(detail) == [(1, 500), (2, None), (3, 500)]
    [cut_off] = [a for a in detail.attempts if a.step_order == 0 and a.status_code is None]
    assert cut_off.error == "attempt 2 got no answer: the run stopped during the call"


async def test_a_compensation_resumed_before_its_first_answer_keeps_its_retries(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    gate = asyncio.Event()
    services.always("shipping", "POST /shipments", Reply(409))
    services.plan("inventory", "DELETE /reservations/*", Reply(500, gate=gate), then=Reply(500))
    first, second = await make_engine(), await make_engine()

    saga_id = await stop_mid_call(first, services, 5)
    status = await resume(second, saga_id)
    gate.set()

    assert status is SagaStatus.FAILED
    assert services.lines().count(UNDO) == 3
    detail = await second.runtime.store.get(saga_id)
    assert undo_rows(detail) == [(1, None), (2, 500), (3, 500)]


async def resume_until_cut_off(
    engine: EngineHarness, saga_id: str, services: FakeServices, calls: int
) -> None:
    """Resume the saga on ``engine`` and cut its run off once ``calls`` calls have arrived."""
    owner = engine.runtime.engine.settings.owner
    [claim] = await engine.runtime.store.claim_due(owner, LEASE_SECONDS, 10)
    task = asyncio.create_task(engine.runtime.engine.execute(engine.definition, claim.lease))
    await services.wait_for_calls(calls)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_an_attempt_cut_off_twice_is_counted_by_every_later_run(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    gates = asyncio.Event(), asyncio.Event()
    services.always("shipping", "POST /shipments", Reply(409))
    replies = Reply(500), Reply(500, gate=gates[0]), Reply(500, gate=gates[1])
    services.plan("inventory", "DELETE /reservations/*", *replies, then=Reply(500))
    first, second, third = await make_engine(), await make_engine(), await make_engine()

    saga_id = await stop_mid_call(first, services, 6)
    await resume_until_cut_off(second, saga_id, services, 7)
    status = await resume(third, saga_id)
    for gate in gates:
        gate.set()

    assert status is SagaStatus.FAILED
    assert services.lines().count(UNDO) == 4, "the last attempt, cut off, is re-sent once"
    detail = await third.runtime.store.get(saga_id)
    assert undo_rows(detail) == [(1, 500), (2, None), (3, None), (4, 500)]


async def test_a_compensation_stopped_during_its_backoff_makes_only_the_attempts_left(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    saga = order_saga()
    saga["steps"][0]["compensation"]["retry"] = SLOW_UNDO
    services.always("shipping", "POST /shipments", Reply(409))
    services.always("inventory", "DELETE /reservations/*", Reply(500))
    first, second = await make_engine(saga), await make_engine(saga)

    created = await first.runtime.engine.start(first.definition, ORDER, {}, None)
    assert created.lease is not None
    saga_id = created.saga.id
    task = asyncio.create_task(first.runtime.engine.execute(first.definition, created.lease))
    store = first.runtime.store

    async def undo_failed_once() -> bool:
        return bool(undo_rows(await store.get(saga_id)))

    await eventually(undo_failed_once, "the first undo attempt recorded")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    saga_row = await store.get_instance(saga_id)
    assert saga_row.next_run_at is not None, "stopped during the backoff"
    await asyncio.sleep((saga_row.next_run_at - datetime.now(UTC)).total_seconds() + 0.05)
    status = await resume(second, saga_id)

    assert status is SagaStatus.FAILED
    assert services.lines().count(UNDO) == 3
    assert undo_rows(await store.get(saga_id)) == [(1, 500), (2, 500), (3, 500)]


async def test_an_operator_retry_grants_the_compensation_a_fresh_set_of_attempts(
    make_engine: EngineFactory, services: FakeServices
) -> None:
    gate = asyncio.Event()
    services.always("shipping", "POST /shipments", Reply(409))
    services.plan(
        "inventory", "DELETE /reservations/*", Reply(500), Reply(500, gate=gate), then=Reply(500)
    )
    first, second = await make_engine(), await make_engine()
    saga_id = await stop_mid_call(first, services, 6)
    assert await resume(second, saga_id) is SagaStatus.FAILED
    gate.set()

    retried = await SagaOperations(second.runtime).retry(saga_id, "cli:test")
    final = await retried.run()

    assert final.status is SagaStatus.FAILED
    assert services.lines().count(UNDO) == 6
    detail = await second.runtime.store.get(saga_id)
    assert undo_rows(detail)[3:] == [(1, 500), (2, 500), (3, 500)]
