"""Creating and reading instances and definitions: round trips, types, idempotency keys."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from saga_runner.errors import SagaNotFound, StoreError
from saga_runner.records import NewStep, SagaDetail
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import SagaStore
from saga_store.helpers import FakeClock, Target, attempt_row, saga_change, start_saga, step_change


async def test_create_then_get_round_trips_every_field(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(
        store,
        definition,
        business_id="order-77",
        idempotency_key="key-1",
        input_data={"order_no": "77", "amount": 9.99, "tags": ["a", "é"], "nested": {"n": None}},
        lease_seconds=15,
    )
    assert created.created and created.lease is not None
    detail = await store.get(created.saga.id)
    saga = detail.instance
    assert saga == created.saga
    assert (saga.business_type, saga.name, saga.business_id) == ("payment", "payment", "order-77")
    assert saga.status is SagaStatus.RUNNING
    assert saga.input == {
        "order_no": "77",
        "amount": 9.99,
        "tags": ["a", "é"],
        "nested": {"n": None},
    }
    assert (saga.definition_hash, saga.idempotency_key, saga.mode) == (definition, "key-1", "sync")
    assert (saga.owner, saga.lease_version) == ("replica-a", created.lease.version)
    assert saga.lease_expires_at == clock.now + timedelta(seconds=15)
    assert saga.created_at == saga.updated_at == clock.now
    assert saga.completed_at is saga.compensated_at is saga.next_run_at is None
    assert [(s.step_order, s.step_name, s.status) for s in detail.steps] == [
        (0, "step_0", StepStatus.PENDING),
        (1, "step_1", StepStatus.PENDING),
    ]
    assert all(s.max_retry_count == 3 and s.retry_count == 0 for s in detail.steps)
    assert detail.attempts == () and detail.events == ()


async def test_timestamps_are_aware_utc_datetimes_with_microseconds(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(store, definition)
    assert created.lease is not None
    await store.write(
        created.lease, attempt_row(0, AttemptKind.ACTION, 1, started_at=clock.now, duration_ms=12)
    )
    await store.record_event(created.saga.id, "operator:ann", "note")
    detail = await store.get(created.saga.id)
    stamps = [
        detail.instance.created_at,
        detail.instance.updated_at,
        detail.instance.lease_expires_at,
        *(s.created_at for s in detail.steps),
        detail.attempts[0].started_at,
        detail.events[0].at,
    ]
    for stamp in stamps:
        assert isinstance(stamp, datetime)
        assert stamp.tzinfo is UTC
        assert stamp.microsecond == clock.now.microsecond


async def test_both_backends_return_identical_records(
    tmp_path: Path, request: pytest.FixtureRequest, clock: FakeClock
) -> None:
    sqlite_target = Target.sqlite(tmp_path / "same.db")
    await sqlite_target.migrate()
    postgres_target: Target = request.getfixturevalue("pg_session_schema")
    await postgres_target.truncate()
    details: list[SagaDetail] = []
    for target in (sqlite_target, postgres_target):
        store = await target.open(clock)
        try:
            details.append(await _scripted_saga(store))
        finally:
            await store.close()
    assert details[0] == details[1]
    assert _types(details[0]) == _types(details[1])


def _types(detail: SagaDetail) -> list[tuple[str, type]]:
    records: list[Any] = [detail.instance, *detail.steps, *detail.attempts, *detail.events]
    return [
        (f"{type(r).__name__}.{f.name}", type(getattr(r, f.name)))
        for r in records
        for f in dataclasses.fields(r)
    ]


async def _scripted_saga(store: SagaStore) -> SagaDetail:
    clock_now = store.now()
    await store.save_definition("h-same", "payment", {"steps": [{"name": "a"}]})
    saga_id = "11111111-2222-3333-4444-555555555555"
    created = await start_saga(store, "h-same", saga_id=saga_id, business_id="order-1")
    lease = created.lease
    assert lease is not None
    request = {"method": "POST", "path": "/orders", "body": {"amount": 1.5, "ok": True}}
    await store.write(lease, step_change(0, StepStatus.RUNNING, execute_data=request))
    await store.write(
        lease,
        attempt_row(
            0, AttemptKind.ACTION, 1, started_at=clock_now, duration_ms=7.25, status_code=201
        ),
    )
    answer = {"status": 201, "headers": {"Content-Type": "application/json"}, "body": {"id": 5}}
    await store.write(lease, step_change(0, StepStatus.SUCCEEDED, result=answer, retry_count=1))
    await store.write(lease, saga_change(SagaStatus.COMPLETED, current_step=1, response=answer))
    await store.record_event(lease.saga_id, "replica-a", "completed", {"steps": 2})
    return await store.get(lease.saga_id)


async def test_duplicate_idempotency_key_returns_the_existing_saga_and_no_new_rows(
    store: SagaStore, definition: str, target: Target
) -> None:
    first = await start_saga(store, definition, idempotency_key="same")
    again = await start_saga(store, definition, idempotency_key="same", owner="replica-b", steps=5)
    assert not again.created and again.lease is None
    assert again.saga == first.saga
    assert await target.count("saga_instances") == 1
    assert await target.count("saga_steps") == 2


async def test_duplicate_key_is_detected_across_concurrent_creators(
    definition: str, open_store: Callable[[], Awaitable[SagaStore]], target: Target
) -> None:
    creators = [await open_store() for _ in range(4)]
    results = await asyncio.gather(
        *(
            start_saga(s, definition, idempotency_key="race", owner=f"r{n}")
            for n, s in enumerate(creators)
        )
    )
    assert sum(r.created for r in results) == 1
    assert len({r.saga.id for r in results}) == 1
    assert await target.count("saga_instances") == 1


async def test_same_key_in_another_saga_type_starts_a_new_saga(
    store: SagaStore, definition: str
) -> None:
    first = await start_saga(store, definition, idempotency_key="k")
    other = await start_saga(store, definition, idempotency_key="k", business_type="refund")
    assert other.created and other.saga.id != first.saga.id


async def test_sagas_without_idempotency_keys_never_collide(
    store: SagaStore, definition: str
) -> None:
    results = [await start_saga(store, definition) for _ in range(3)]
    assert all(r.created for r in results)
    assert len({r.saga.id for r in results}) == 3


async def test_a_saga_with_no_steps_can_be_created(store: SagaStore, definition: str) -> None:
    created = await start_saga(store, definition, steps=0)
    assert (await store.get(created.saga.id)).steps == ()


async def test_unknown_definition_hash_is_refused(store: SagaStore, definition: str) -> None:
    with pytest.raises(StoreError, match=r"(?i)foreign key"):
        await start_saga(store, "never-saved")


async def test_reusing_a_saga_id_is_a_store_error(store: SagaStore, definition: str) -> None:
    created = await start_saga(store, definition)
    with pytest.raises(StoreError):
        await start_saga(store, definition, saga_id=created.saga.id)


async def test_get_of_an_unknown_saga_raises_not_found(store: SagaStore) -> None:
    with pytest.raises(SagaNotFound):
        await store.get("no-such-saga")
    with pytest.raises(SagaNotFound):
        await store.get_instance("no-such-saga")


async def test_save_definition_is_idempotent_and_keeps_the_first_body(
    store: SagaStore, clock: FakeClock
) -> None:
    first = await store.save_definition("h1", "payment", {"v": 1})
    clock.advance(5)
    second = await store.save_definition("h1", "payment", {"v": 2})
    assert second == first
    assert first.body == {"v": 1} and first.created_at == clock.now - timedelta(seconds=5)
    assert await store.get_definition("h1") == first
    assert await store.get_definition("h2") is None


async def test_invalid_arguments_are_refused_before_touching_the_database(
    store: SagaStore, definition: str
) -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        await start_saga(store, definition, lease_seconds=0)
    created = await start_saga(store, definition)
    assert created.lease is not None
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.write(created.lease, saga_change(next_run_at=datetime(2031, 1, 1)))
    with pytest.raises(ValueError, match="limit"):
        await store.list_sagas(limit=0)


async def test_optional_fields_may_be_null_and_steps_keep_their_retry_limits(
    store: SagaStore, definition: str
) -> None:
    other = await store.create_instance(
        business_type="payment",
        business_id=None,
        definition_hash=definition,
        mode="async",
        input_data=None,
        steps=[NewStep("a", 1), NewStep("b", 10)],
        owner="r",
        lease_seconds=5,
    )
    detail = await store.get(other.saga.id)
    assert [s.max_retry_count for s in detail.steps] == [1, 10]
    assert (detail.instance.business_id, detail.instance.input, detail.instance.mode) == (
        None,
        None,
        "async",
    )
