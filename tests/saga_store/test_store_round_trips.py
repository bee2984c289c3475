"""Every kind of write round-trips through both real backends, and fencing still refuses.

Each test gets a database of its own: a fresh PostgreSQL schema (migrated, dropped after) or a
fresh SQLite file under ``tmp_path``. A write is read back through ``get`` (the consistent
detail read) and ``get_instance``, and must come back exactly as written: JSON values with
nesting and non-ASCII text, timestamps in UTC with microseconds, ``None`` as NULL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest

from saga_runner.errors import LeaseLost, SagaNotFound
from saga_runner.records import Lease, NewStep
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import AttemptRecord, SagaStore, StepChange, WriteBatch
from saga_store.helpers import FakeClock, Target, start_saga

JSON = {"amount": 12.5, "items": [1, {"sku": "ä-1"}], "note": "café ✓", "none": None}
ANSWER = {"status": 201, "headers": {"location": "/orders/9"}, "body": {"id": 9, "ok": True}}
# A time zone other than UTC, with microseconds: it must come back as the same instant in UTC.
PLUS_TWO = timezone(timedelta(hours=2))


@pytest.fixture
async def fresh_store(fresh_target: Target, clock: FakeClock) -> AsyncIterator[SagaStore]:
    """A migrated store on a database nobody else uses (fresh schema, fresh file)."""
    await fresh_target.migrate()
    store = await fresh_target.open(clock)
    try:
        yield store
    finally:
        await store.close()


async def _started(store: SagaStore) -> Lease:
    saved = await store.save_definition("def-rt", "payment", {"name": "payment", "steps": []})
    created = await start_saga(store, saved.hash)
    assert created.lease is not None
    return created.lease


def _at(clock: FakeClock, seconds: float) -> datetime:
    return (clock.now + timedelta(seconds=seconds)).astimezone(PLUS_TWO)


async def test_definition_creation_and_event_round_trip(
    fresh_store: SagaStore, clock: FakeClock
) -> None:
    saved = await fresh_store.save_definition("def-rt", "payment", {"name": "payment", **JSON})
    assert await fresh_store.get_definition("def-rt") == saved
    assert (saved.body, saved.created_at) == ({"name": "payment", **JSON}, clock.now)
    steps = [NewStep("reserve", 3, StepStatus.RUNNING, execute_data=JSON, retry_count=1)]
    created = await fresh_store.create_instance(
        business_type="payment",
        business_id="order-ä",
        definition_hash=saved.hash,
        mode="async",
        input_data=JSON,
        steps=[*steps, NewStep("charge", 2)],
        owner="replica-a",
        lease_seconds=30,
        idempotency_key="key-1",
        saga_id="saga-rt-1",
        started={"headers": {"x-request-id": "r-1"}},
    )
    event = await fresh_store.record_event("saga-rt-1", "operator:ann", "note", {"why": JSON})
    detail = await fresh_store.get("saga-rt-1")
    assert detail.instance == created.saga == await fresh_store.get_instance("saga-rt-1")
    assert detail.steps == created.steps
    saga = detail.instance
    assert (saga.input, saga.business_id, saga.mode, saga.current_step) == (
        JSON,
        "order-ä",
        "async",
        0,
    )
    assert (saga.owner, saga.lease_version) == ("replica-a", 1)
    assert saga.lease_expires_at == clock.now + timedelta(seconds=30)
    assert [(e.action, e.actor, e.detail) for e in detail.events] == [
        ("started", "replica-a", {"headers": {"x-request-id": "r-1"}}),
        ("note", "operator:ann", {"why": JSON}),
    ]
    assert detail.events[-1] == event


async def test_every_saga_column_of_a_batch_round_trips(
    fresh_store: SagaStore, clock: FakeClock
) -> None:
    lease = await _started(fresh_store)
    clock.advance(1)
    due = _at(clock, 5)
    columns = {
        "current_step": 1,
        "failure_reason": "charge: 402 ✗",
        "failed_step": 1,
        "response": ANSWER,
        "next_run_at": due,
    }
    batch = WriteBatch(saga_status=SagaStatus.COMPENSATING, saga_columns=columns)
    written = await fresh_store.write(lease, batch)
    stored = await fresh_store.get_instance(lease.saga_id)
    assert stored == written
    assert (stored.status, stored.current_step, stored.failure_reason) == (
        SagaStatus.COMPENSATING,
        1,
        "charge: 402 ✗",
    )
    assert (stored.failed_step, stored.response, stored.next_run_at) == (1, ANSWER, due)
    assert stored.next_run_at is not None and stored.next_run_at.utcoffset() == timedelta(0)
    assert stored.updated_at == clock.now and stored.compensated_at is None
    clock.advance(1)
    done = await fresh_store.write(lease, WriteBatch(saga_status=SagaStatus.COMPENSATED))
    assert done == await fresh_store.get_instance(lease.saga_id)
    assert (done.compensated_at, done.completed_at, done.response) == (clock.now, None, ANSWER)


async def test_every_step_column_of_a_batch_round_trips(
    fresh_store: SagaStore, clock: FakeClock
) -> None:
    lease = await _started(fresh_store)
    clock.advance(1)
    retry_at = _at(clock, 3)
    columns = {
        "execute_data": JSON,
        "compensate_data": {"method": "DELETE", "path": "/orders/ä"},
        "result": ANSWER,
        "retry_count": 2,
        "max_retry_count": 5,
        "next_retry_at": retry_at,
        "error": "timeout ✗",
    }
    await fresh_store.write(lease, WriteBatch(steps=(StepChange(1, StepStatus.RUNNING, columns),)))
    step = (await fresh_store.get(lease.saga_id)).steps[1]
    assert {name: getattr(step, name) for name in columns} == columns
    assert (step.status, step.updated_at) == (StepStatus.RUNNING, clock.now)
    assert (await fresh_store.get_instance(lease.saga_id)).updated_at == clock.now
    cleared = {"next_retry_at": None, "error": None}
    await fresh_store.write(lease, WriteBatch(steps=(StepChange(1, StepStatus.FAILED, cleared),)))
    step = (await fresh_store.get(lease.saga_id)).steps[1]
    assert (step.status, step.next_retry_at, step.error, step.result) == (
        StepStatus.FAILED,
        None,
        None,
        ANSWER,
    )


async def test_attempt_rows_round_trip(fresh_store: SagaStore, clock: FakeClock) -> None:
    lease = await _started(fresh_store)
    records = (
        AttemptRecord(0, AttemptKind.ACTION, 1, _at(clock, 0), 30000.0, error="timeout ✗"),
        AttemptRecord(0, AttemptKind.ACTION, 2, _at(clock, 31), 12.25, status_code=201),
        AttemptRecord(1, AttemptKind.COMPENSATION, 1, _at(clock, 32), 3.5, status_code=404),
    )
    # Two attempts in one batch (their ids may come in either order), then one more.
    await fresh_store.write(lease, WriteBatch(attempts=records[:2]))
    await fresh_store.write(lease, WriteBatch(attempts=records[2:]))
    attempts = (await fresh_store.get(lease.saga_id)).attempts
    stored = [
        (a.step_order, a.kind, a.attempt, a.started_at, a.duration_ms, a.status_code, a.error)
        for a in attempts
    ]
    written = [
        (r.step_order, r.kind, r.attempt, r.started_at, r.duration_ms, r.status_code, r.error)
        for r in records
    ]
    assert sorted(stored[:2]) == sorted(written[:2]) and stored[2] == written[2]
    assert all(a.saga_id == lease.saga_id for a in attempts)
    assert max(attempts[0].id, attempts[1].id) < attempts[2].id


async def test_a_releasing_batch_round_trips_and_ends_the_lease(
    fresh_store: SagaStore, clock: FakeClock
) -> None:
    lease = await _started(fresh_store)
    due = _at(clock, 60)
    batch = WriteBatch(
        steps=(StepChange(0, StepStatus.RUNNING, {"retry_count": 1}),),
        attempts=(AttemptRecord(0, AttemptKind.ACTION, 1, _at(clock, 0), 5.0, status_code=503),),
        saga_columns={"next_run_at": due},
        release=True,
    )
    saga = await fresh_store.write(lease, batch)
    assert saga == await fresh_store.get_instance(lease.saga_id)
    assert (saga.owner, saga.lease_expires_at, saga.next_run_at) == (None, None, due)
    assert saga.lease_version == lease.version
    with pytest.raises(LeaseLost):
        await fresh_store.write(lease, WriteBatch())


async def test_lease_writes_round_trip(fresh_store: SagaStore, clock: FakeClock) -> None:
    lease = await _started(fresh_store)
    clock.advance(1)
    assert await fresh_store.renew(lease, 40)
    saga = await fresh_store.get_instance(lease.saga_id)
    assert saga.lease_expires_at == clock.now + timedelta(seconds=40)
    assert await fresh_store.renew_many([lease, lease], 50) == frozenset()
    saga = await fresh_store.get_instance(lease.saga_id)
    assert saga.lease_expires_at == clock.now + timedelta(seconds=50)
    due = _at(clock, 10)
    assert await fresh_store.release(lease, next_run_at=due)
    saga = await fresh_store.get_instance(lease.saga_id)
    assert (saga.owner, saga.lease_expires_at, saga.next_run_at) == (None, None, due)
    assert await fresh_store.claim_due("replica-b", 30, 10) == []
    clock.advance(11)
    [claim] = await fresh_store.claim_due("replica-b", 30, 10)
    assert claim.saga == await fresh_store.get_instance(lease.saga_id)
    assert (claim.saga.owner, claim.saga.next_run_at) == ("replica-b", None)
    assert claim.lease == Lease(lease.saga_id, "replica-b", lease.version + 1)
    taken = await fresh_store.claim_one(lease.saga_id, "operator:ann", 30, force=True)
    assert taken is not None and taken.lease.version == lease.version + 2


def _refused_writes(clock: FakeClock) -> dict[str, WriteBatch]:
    record = AttemptRecord(0, AttemptKind.ACTION, 1, _at(clock, 0), 1.0, status_code=200)
    step = StepChange(0, StepStatus.RUNNING, {"execute_data": JSON})
    return {
        "saga status": WriteBatch(saga_status=SagaStatus.COMPENSATING),
        "saga columns": WriteBatch(saga_columns={"next_run_at": _at(clock, 5)}),
        "step": WriteBatch(steps=(step,)),
        "attempt": WriteBatch(attempts=(record,)),
        "release": WriteBatch(release=True),
        "nothing": WriteBatch(),
        "all at once": WriteBatch(
            steps=(step,),
            attempts=(record,),
            saga_status=SagaStatus.RUNNING,
            saga_columns={"current_step": 0},
            release=True,
        ),
    }


async def test_every_write_kind_is_refused_under_a_stale_lease_and_changes_nothing(
    fresh_store: SagaStore, clock: FakeClock
) -> None:
    stale = await _started(fresh_store)
    claim = await fresh_store.claim_one(stale.saga_id, "replica-b", 30, force=True)
    assert claim is not None
    impostor = Lease(stale.saga_id, "impostor", claim.lease.version)
    before = await fresh_store.get(stale.saga_id)
    clock.advance(1)
    for kind, batch in _refused_writes(clock).items():
        for lease in (stale, impostor):
            with pytest.raises(LeaseLost):
                await fresh_store.write(lease, batch)
            assert await fresh_store.get(stale.saga_id) == before, kind
    assert not await fresh_store.renew(stale, 30)
    assert await fresh_store.renew_many([stale, impostor], 30) == {stale, impostor}
    assert not await fresh_store.release(stale)
    assert await fresh_store.get(stale.saga_id) == before
    saga = await fresh_store.write(claim.lease, WriteBatch(saga_status=SagaStatus.COMPENSATING))
    assert (saga.status, saga.owner) == (SagaStatus.COMPENSATING, "replica-b")


async def test_a_write_to_a_saga_that_does_not_exist_is_not_found(
    fresh_store: SagaStore, clock: FakeClock
) -> None:
    ghost = Lease("no-such-saga", "replica-a", 1)
    for batch in _refused_writes(clock).values():
        with pytest.raises(SagaNotFound):
            await fresh_store.write(ghost, batch)
