"""``write`` batches and one-write creation: all or nothing under the lease, on both stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from saga_runner.errors import IllegalTransition, LeaseLost
from saga_runner.records import Lease, NewStep
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import SagaStore
from saga_runner.store.batch import AttemptRecord, StepChange, WriteBatch
from saga_store.helpers import FakeClock, saga_change, start_saga, step_change


async def _started(store: SagaStore, definition: str) -> Lease:
    created = await start_saga(store, definition)
    assert created.lease is not None
    return created.lease


def _attempt(step_order: int, attempt: int = 1) -> AttemptRecord:
    return AttemptRecord(
        step_order,
        AttemptKind.ACTION,
        attempt,
        started_at=datetime(2030, 1, 1, tzinfo=UTC),
        duration_ms=12.5,
        status_code=201,
    )


async def test_creation_writes_the_running_first_step_and_the_started_event_at_once(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    steps = [
        NewStep("reserve", 3, StepStatus.RUNNING, execute_data={"method": "POST"}, retry_count=1),
        NewStep("charge", 2),
    ]
    created = await store.create_instance(
        business_type="payment",
        business_id="order-1",
        definition_hash=definition,
        mode="sync",
        input_data={},
        steps=steps,
        owner="replica-a",
        lease_seconds=30.0,
        started={"headers": {"x-request-id": "r"}},
    )
    assert created.lease is not None
    detail = await store.get(created.saga.id)
    assert detail.instance == created.saga and detail.instance.current_step == 0
    assert detail.steps == created.steps
    assert [(s.status, s.execute_data, s.retry_count) for s in detail.steps] == [
        (StepStatus.RUNNING, {"method": "POST"}, 1),
        (StepStatus.PENDING, None, 0),
    ]
    assert [(e.action, e.actor, e.detail, e.at) for e in detail.events] == [
        ("started", "replica-a", {"headers": {"x-request-id": "r"}}, clock.now)
    ]


async def test_a_duplicate_key_creates_no_steps_and_no_event(
    store: SagaStore, definition: str
) -> None:
    first = await start_saga(store, definition, idempotency_key="k", started={})
    again = await start_saga(store, definition, idempotency_key="k", started={})
    assert again.lease is None and again.steps == () and again.saga.id == first.saga.id
    assert len((await store.get(first.saga.id)).events) == 1


async def test_a_step_outcome_the_next_announcement_and_the_attempt_go_in_one_write(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease = await _started(store, definition)
    await store.write(lease, step_change(0, StepStatus.RUNNING, retry_count=1))
    clock.advance(1)
    saga = await store.write(
        lease,
        WriteBatch(
            steps=(
                StepChange(0, StepStatus.SUCCEEDED, {"result": {"status": 201}, "error": None}),
                StepChange(
                    1, StepStatus.RUNNING, {"execute_data": {"m": "POST"}, "retry_count": 1}
                ),
            ),
            attempts=(_attempt(0),),
            saga_status=SagaStatus.RUNNING,
            saga_columns={"current_step": 1},
        ),
    )
    assert (saga.current_step, saga.updated_at) == (1, clock.now)
    detail = await store.get(lease.saga_id)
    assert [(s.status, s.updated_at) for s in detail.steps] == [
        (StepStatus.SUCCEEDED, clock.now),
        (StepStatus.RUNNING, clock.now),
    ]
    assert detail.steps[0].result == {"status": 201} and detail.steps[1].retry_count == 1
    assert [(a.step_order, a.attempt, a.status_code, a.duration_ms) for a in detail.attempts] == [
        (0, 1, 201, 12.5)
    ]


async def test_the_last_write_completes_and_releases_the_lease(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    lease = await _started(store, definition)
    await store.write(lease, saga_change(next_run_at=clock.now + timedelta(seconds=5)))
    clock.advance(1)
    saga = await store.write(
        lease,
        WriteBatch(saga_status=SagaStatus.COMPLETED, saga_columns={"response": {}}, release=True),
    )
    assert (saga.status, saga.completed_at, saga.response) == (
        SagaStatus.COMPLETED,
        clock.now,
        {},
    )
    assert (saga.owner, saga.lease_expires_at, saga.next_run_at) == (None, None, None)
    assert saga.lease_version == lease.version
    with pytest.raises(LeaseLost):
        await store.write(lease, WriteBatch())


async def test_an_illegal_step_change_refuses_the_whole_batch(
    store: SagaStore, definition: str
) -> None:
    lease = await _started(store, definition)
    before = await store.get(lease.saga_id)
    batch = WriteBatch(
        steps=(
            StepChange(0, StepStatus.RUNNING, {"retry_count": 1}),
            StepChange(1, StepStatus.SUCCEEDED),  # pending -> succeeded is not allowed
        ),
        attempts=(_attempt(0),),
        saga_status=SagaStatus.RUNNING,
        saga_columns={"current_step": 1},
    )
    with pytest.raises(IllegalTransition):
        await store.write(lease, batch)
    assert await store.get(lease.saga_id) == before


async def test_a_stale_lease_refuses_the_whole_batch(store: SagaStore, definition: str) -> None:
    lease = await _started(store, definition)
    await store.release(lease)
    claim = await store.claim_one(lease.saga_id, "replica-b", 30.0)
    assert claim is not None
    before = await store.get(lease.saga_id)
    batch = WriteBatch(
        steps=(StepChange(0, StepStatus.RUNNING, {"retry_count": 1}),),
        attempts=(_attempt(0),),
        saga_status=SagaStatus.COMPLETED,
        release=True,
    )
    with pytest.raises(LeaseLost):
        await store.write(lease, batch)
    assert await store.get(lease.saga_id) == before


async def test_a_batch_refuses_unknown_columns_and_a_step_twice(
    store: SagaStore, definition: str
) -> None:
    lease = await _started(store, definition)
    with pytest.raises(ValueError, match="owner"):
        await store.write(lease, WriteBatch(saga_columns={"owner": "x"}))
    twice = (StepChange(0, StepStatus.RUNNING), StepChange(0, StepStatus.SUCCEEDED))
    with pytest.raises(ValueError, match="twice"):
        await store.write(lease, WriteBatch(steps=twice))
