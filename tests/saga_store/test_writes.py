"""Fenced writes: transitions enforced, stale leases refused, nothing changed on refusal."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest

from saga_runner.errors import IllegalTransition, LeaseLost, SagaNotFound
from saga_runner.records import Lease
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import SagaStore
from saga_store.helpers import (
    FakeClock,
    attempt_row,
    saga_change,
    start_saga,
    step_change,
    step_of,
)


async def _started(store: SagaStore, definition: str) -> Lease:
    created = await start_saga(store, definition)
    assert created.lease is not None
    return created.lease


async def test_saga_status_writes_set_finish_times_and_bump_updated_at(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease = await _started(store, definition)
    clock.advance(1)
    saga = await store.write(
        lease,
        saga_change(
            SagaStatus.COMPENSATING, current_step=1, failure_reason="charge: 402", failed_step=1
        ),
    )
    assert (saga.status, saga.current_step, saga.failure_reason, saga.failed_step) == (
        SagaStatus.COMPENSATING,
        1,
        "charge: 402",
        1,
    )
    assert saga.updated_at == clock.now and saga.created_at < saga.updated_at
    clock.advance(1)
    done = await store.write(lease, saga_change(SagaStatus.COMPENSATED, response={"status": 402}))
    assert done.compensated_at == clock.now and done.completed_at is None
    assert (done.current_step, done.failure_reason, done.response) == (
        1,
        "charge: 402",
        {"status": 402},
    )


async def test_completed_sets_completed_at(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease = await _started(store, definition)
    clock.advance(2)
    saga = await store.write(lease, saga_change(SagaStatus.COMPLETED))
    assert saga.completed_at == clock.now and saga.compensated_at is None


async def test_none_clears_a_field_and_a_column_left_out_keeps_it(
    store: SagaStore, definition: str
) -> None:
    lease = await _started(store, definition)
    await store.write(
        lease, saga_change(SagaStatus.RUNNING, failure_reason="transient", current_step=0)
    )
    kept = await store.write(lease, saga_change(SagaStatus.RUNNING, current_step=1))
    assert (kept.failure_reason, kept.current_step) == ("transient", 1)
    cleared = await store.write(lease, saga_change(SagaStatus.RUNNING, failure_reason=None))
    assert (cleared.failure_reason, cleared.current_step) == (None, 1)


async def test_step_writes_record_requests_results_and_retries(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease = await _started(store, definition)
    clock.advance(1)
    request = {"method": "POST", "url": "http://orders/orders", "body": {"n": 1}}
    await store.write(lease, step_change(0, StepStatus.RUNNING, execute_data=request))
    step = await step_of(store, lease.saga_id, 0)
    assert (step.status, step.execute_data, step.updated_at) == (
        StepStatus.RUNNING,
        request,
        clock.now,
    )
    retry_at = clock.now + timedelta(seconds=3)
    await store.write(
        lease,
        step_change(0, StepStatus.RUNNING, retry_count=1, next_retry_at=retry_at, error="timeout"),
    )
    step = await step_of(store, lease.saga_id, 0)
    assert (step.retry_count, step.next_retry_at, step.error, step.execute_data) == (
        1,
        retry_at,
        "timeout",
        request,
    )
    answer = {"status": 201, "headers": {}, "body": {"id": 9}}
    await store.write(
        lease, step_change(0, StepStatus.SUCCEEDED, result=answer, next_retry_at=None, error=None)
    )
    step = await step_of(store, lease.saga_id, 0)
    assert (step.result, step.next_retry_at, step.error) == (answer, None, None)
    assert (await store.get_instance(lease.saga_id)).updated_at == clock.now


async def test_unknown_outcome_step_can_be_re_sent_then_compensated(
    store: SagaStore, definition: str
) -> None:
    lease = await _started(store, definition)
    await store.write(lease, step_change(0, StepStatus.RUNNING))
    await store.write(lease, step_change(0, StepStatus.RUNNING, retry_count=1))
    await store.write(lease, step_change(0, StepStatus.FAILED, error="timeout after send"))
    await store.write(
        lease, step_change(0, StepStatus.COMPENSATING, compensate_data={"m": "DELETE"})
    )
    step = await step_of(store, lease.saga_id, 0)
    assert step.status is StepStatus.COMPENSATING


async def test_operator_retry_moves_failed_saga_and_step_back_to_compensating(
    store: SagaStore, definition: str
) -> None:
    lease = await _started(store, definition)
    await store.write(lease, step_change(0, StepStatus.RUNNING))
    await store.write(lease, step_change(0, StepStatus.SUCCEEDED))
    await store.write(lease, saga_change(SagaStatus.COMPENSATING))
    await store.write(lease, step_change(0, StepStatus.COMPENSATING))
    await store.write(lease, step_change(0, StepStatus.COMPENSATION_FAILED, error="500"))
    await store.write(
        lease, saga_change(SagaStatus.FAILED, failure_reason="compensation exhausted")
    )
    claim = await store.claim_one(lease.saga_id, "operator:ann", 30, force=True)
    assert claim is not None
    saga = await store.write(claim.lease, saga_change(SagaStatus.COMPENSATING))
    await store.write(claim.lease, step_change(0, StepStatus.COMPENSATING))
    step = await step_of(store, claim.lease.saga_id, 0)
    assert (saga.status, step.status) == (SagaStatus.COMPENSATING, StepStatus.COMPENSATING)


async def test_illegal_saga_transition_is_refused_and_changes_nothing(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease = await _started(store, definition)
    done = await store.write(lease, saga_change(SagaStatus.COMPLETED))
    clock.advance(1)
    with pytest.raises(IllegalTransition, match="completed -> running"):
        await store.write(lease, saga_change(SagaStatus.RUNNING, current_step=5))
    assert await store.get_instance(lease.saga_id) == done


async def test_illegal_step_transition_is_refused_and_changes_nothing(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease = await _started(store, definition)
    before = await store.get(lease.saga_id)
    clock.advance(1)
    with pytest.raises(IllegalTransition, match="pending -> succeeded"):
        await store.write(lease, step_change(0, StepStatus.SUCCEEDED, result={"status": 200}))
    after = await store.get(lease.saga_id)
    assert after == before


async def test_stale_lease_gets_lease_lost_on_every_write_and_changes_nothing(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    stale = await _started(store, definition)
    claim = await store.claim_one(stale.saga_id, "replica-b", 30, force=True)
    assert claim is not None and claim.lease.version == stale.version + 1
    before = await store.get(stale.saga_id)
    clock.advance(1)
    with pytest.raises(LeaseLost, match="replica-b"):
        await store.write(stale, saga_change(SagaStatus.COMPENSATING))
    with pytest.raises(LeaseLost):
        await store.write(stale, step_change(0, StepStatus.RUNNING))
    with pytest.raises(LeaseLost):
        await store.write(
            stale, attempt_row(0, AttemptKind.ACTION, 1, started_at=clock.now, duration_ms=1)
        )
    with pytest.raises(LeaseLost):
        await store.write(stale, saga_change(next_run_at=clock.now))
    assert not await store.renew(stale, 30)
    assert not await store.release(stale)
    assert await store.get(stale.saga_id) == before


async def test_a_lease_with_the_right_version_but_another_owner_is_refused(
    store: SagaStore, definition: str
) -> None:
    lease = await _started(store, definition)
    with pytest.raises(LeaseLost):
        await store.write(
            Lease(lease.saga_id, "impostor", lease.version), saga_change(SagaStatus.RUNNING)
        )


async def test_the_new_holder_writes_after_a_takeover(store: SagaStore, definition: str) -> None:
    stale = await _started(store, definition)
    claim = await store.claim_one(stale.saga_id, "replica-b", 30, force=True)
    assert claim is not None
    await store.write(claim.lease, step_change(0, StepStatus.RUNNING))
    step = await step_of(store, claim.lease.saga_id, 0)
    assert step.status is StepStatus.RUNNING


async def test_an_expired_but_unclaimed_lease_may_still_write(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease = await _started(store, definition)
    clock.advance(3600)
    saga = await store.write(lease, saga_change(SagaStatus.COMPLETED))
    assert saga.status is SagaStatus.COMPLETED


async def test_writes_to_unknown_sagas_or_steps_raise_not_found(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    ghost = Lease("no-such-saga", "replica-a", 1)
    with pytest.raises(SagaNotFound):
        await store.write(ghost, saga_change(SagaStatus.RUNNING))
    with pytest.raises(SagaNotFound):
        await store.write(ghost, step_change(0, StepStatus.RUNNING))
    lease = await _started(store, definition)
    with pytest.raises(SagaNotFound, match="no step 7"):
        await store.write(lease, step_change(7, StepStatus.RUNNING))
    with pytest.raises(SagaNotFound, match="no step 7"):
        await store.write(
            lease, attempt_row(7, AttemptKind.ACTION, 1, started_at=clock.now, duration_ms=1)
        )


async def test_attempts_are_recorded_in_order_with_their_outcomes(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease = await _started(store, definition)
    await store.write(
        lease,
        attempt_row(
            0, AttemptKind.ACTION, 1, started_at=clock.now, duration_ms=30000, error="timeout"
        ),
    )
    await store.write(
        lease,
        attempt_row(
            0, AttemptKind.ACTION, 2, started_at=clock.advance(1), duration_ms=12.5, status_code=201
        ),
    )
    await store.write(
        lease,
        attempt_row(
            0,
            AttemptKind.COMPENSATION,
            1,
            started_at=clock.advance(1),
            duration_ms=3,
            status_code=404,
        ),
    )
    detail = await store.get(lease.saga_id)
    first, second, comp = detail.attempts
    assert first.id < second.id < comp.id
    assert [(a.kind, a.attempt, a.status_code, a.error) for a in detail.attempts] == [
        (AttemptKind.ACTION, 1, None, "timeout"),
        (AttemptKind.ACTION, 2, 201, None),
        (AttemptKind.COMPENSATION, 1, 404, None),
    ]
    assert second.duration_ms == 12.5 and second.saga_id == lease.saga_id


async def test_a_store_keeps_working_after_writes_are_cancelled_midway(
    store: SagaStore, definition: str
) -> None:
    lease = await _started(store, definition)
    for ticks in range(12):
        task = asyncio.create_task(
            store.write(lease, saga_change(SagaStatus.RUNNING, current_step=1))
        )
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    saga = await store.write(lease, saga_change(SagaStatus.RUNNING, current_step=2))
    assert saga.current_step == 2
    assert (await store.get_instance(lease.saga_id)).current_step == 2
