"""Queries for operators and probes: list and paging, counts, events, retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from saga_runner.errors import SagaNotFound
from saga_runner.records import Lease, PageCursor, SagaInstance
from saga_runner.states import AttemptKind, SagaStatus, StepStatus
from saga_runner.store import SagaStore
from saga_store.helpers import FakeClock, Target, attempt_row, saga_change, start_saga, step_change


async def _finish(store: SagaStore, lease: Lease | None, status: SagaStatus) -> SagaInstance:
    """Walk a freshly created saga to ``status`` along legal transitions."""
    assert lease is not None
    path = {
        SagaStatus.RUNNING: [],
        SagaStatus.COMPENSATING: [SagaStatus.COMPENSATING],
        SagaStatus.COMPLETED: [SagaStatus.COMPLETED],
        SagaStatus.COMPENSATED: [SagaStatus.COMPENSATING, SagaStatus.COMPENSATED],
        SagaStatus.FAILED: [SagaStatus.COMPENSATING, SagaStatus.FAILED],
    }[status]
    saga = await store.get_instance(lease.saga_id)
    for step in path:
        saga = await store.write(lease, saga_change(step))
    return saga


async def _saga(
    store: SagaStore, definition: str, status: SagaStatus = SagaStatus.RUNNING, **kw: Any
) -> SagaInstance:
    created = await start_saga(store, definition, **kw)
    return await _finish(store, created.lease, status)


async def test_list_is_newest_first_and_pages_through_everything(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    made = []
    for _ in range(7):
        made.append((await _saga(store, definition)).id)
        clock.advance(1)
    seen: list[str] = []
    page = await store.list_sagas(limit=3)
    pages = 1
    while True:
        seen += [s.id for s in page.items]
        if page.next_cursor is None:
            break
        page = await store.list_sagas(limit=3, before=page.next_cursor)
        pages += 1
    assert seen == list(reversed(made))
    assert pages == 3


async def test_paging_is_stable_for_sagas_created_in_the_same_microsecond(
    store: SagaStore, definition: str
) -> None:
    made = {(await _saga(store, definition)).id for _ in range(5)}
    first = await store.list_sagas(limit=2)
    assert first.next_cursor is not None
    second = await store.list_sagas(limit=2, before=first.next_cursor)
    assert second.next_cursor is not None
    third = await store.list_sagas(limit=2, before=second.next_cursor)
    ids = [s.id for p in (first, second, third) for s in p.items]
    assert len(ids) == 5 and set(ids) == made
    assert third.next_cursor is None
    assert ids == sorted(ids, reverse=True)


async def test_an_exact_last_page_has_no_next_cursor(store: SagaStore, definition: str) -> None:
    for _ in range(2):
        await _saga(store, definition)
    page = await store.list_sagas(limit=2)
    assert len(page.items) == 2 and page.next_cursor is None


async def test_list_filters_by_status_name_and_business_id(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    done = await _saga(store, definition, SagaStatus.COMPLETED, business_id="order-1")
    clock.advance(1)
    running = await _saga(store, definition, business_id="order-1")
    clock.advance(1)
    refund = await _saga(store, definition, business_type="refund", business_id="order-2")

    async def ids(**filters: object) -> list[str]:
        page = await store.list_sagas(**filters)  # type: ignore[arg-type]
        return [s.id for s in page.items]

    assert await ids() == [refund.id, running.id, done.id]
    assert await ids(status=SagaStatus.COMPLETED) == [done.id]
    assert await ids(name="payment") == [running.id, done.id]
    assert await ids(business_id="order-1") == [running.id, done.id]
    assert await ids(business_id="order-1", status=SagaStatus.RUNNING) == [running.id]
    assert await ids(name="refund", business_id="order-1") == []


def test_page_cursors_round_trip_and_garbage_is_a_value_error() -> None:
    cursor = PageCursor(FakeClock().now, "saga|with|pipes")
    assert PageCursor.decode(cursor.encode()) == cursor
    for garbage in ("", "not-base64!", "bm9waXBl", "MjAyMS0wMS0wMXxh"):
        with pytest.raises(ValueError, match="invalid page cursor"):
            PageCursor.decode(garbage)


async def test_counts_in_flight_and_oldest_unfinished(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    assert await store.in_flight_count() == 0
    assert await store.oldest_unfinished_created_at() is None
    assert set((await store.counts_by_status()).values()) == {0}
    oldest_done = await _saga(store, definition, SagaStatus.COMPLETED)
    clock.advance(1)
    oldest_active = await _saga(store, definition, SagaStatus.COMPENSATING)
    clock.advance(1)
    await _saga(store, definition)
    await _saga(store, definition, SagaStatus.FAILED)
    await _saga(store, definition, SagaStatus.COMPENSATED)
    counts = await store.counts_by_status()
    assert counts == {
        SagaStatus.RUNNING: 1,
        SagaStatus.COMPENSATING: 1,
        SagaStatus.COMPLETED: 1,
        SagaStatus.COMPENSATED: 1,
        SagaStatus.FAILED: 1,
    }
    assert await store.in_flight_count() == 2
    assert await store.oldest_unfinished_created_at() == oldest_active.created_at
    assert oldest_done.created_at < oldest_active.created_at


async def test_events_are_recorded_oldest_first_with_their_detail(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    saga = await _saga(store, definition)
    first = await store.record_event(saga.id, "operator:ann", "abort", {"reason": "customer asked"})
    clock.advance(1)
    second = await store.record_event(saga.id, "replica-b", "lease_taken_over")
    events = (await store.get(saga.id)).events
    assert events == (first, second)
    assert (first.actor, first.action, first.detail, first.at) == (
        "operator:ann",
        "abort",
        {"reason": "customer asked"},
        clock.now - timedelta(seconds=1),
    )
    assert second.detail == {}


async def test_an_event_for_an_unknown_saga_raises_not_found(store: SagaStore) -> None:
    with pytest.raises(SagaNotFound):
        await store.record_event("no-such-saga", "operator:ann", "retry")


async def test_retention_deletes_only_old_finished_sagas_in_bounded_batches(
    store: SagaStore, definition: str, clock: FakeClock, target: Target
) -> None:
    old = []
    for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED) * 3:
        created = await start_saga(store, definition)
        assert created.lease is not None
        await store.write(created.lease, step_change(0, StepStatus.RUNNING))
        await store.write(
            created.lease,
            attempt_row(0, AttemptKind.ACTION, 1, started_at=clock.now, duration_ms=1),
        )
        await store.record_event(created.saga.id, "replica-a", "note")
        old.append((await _finish(store, created.lease, status)).id)
    kept = [(await _saga(store, definition, SagaStatus.FAILED)).id]
    clock.advance(1)
    kept.append((await _saga(store, definition)).id)
    clock.advance(3600)
    cutoff = clock.now - timedelta(seconds=60)
    kept.append((await _saga(store, definition, SagaStatus.COMPLETED)).id)

    batches = [await store.delete_finished_before(cutoff, batch_size=4) for _ in range(3)]

    assert batches == [4, 2, 0]
    assert [s.id for s in (await store.list_sagas()).items] == list(reversed(kept))
    for saga_id in old:
        with pytest.raises(SagaNotFound):
            await store.get(saga_id)
    kept_ids = ", ".join(f"'{k}'" for k in kept)
    for table in ("saga_steps", "saga_step_attempts", "saga_events"):
        assert await target.count(table, f"saga_id NOT IN ({kept_ids})") == 0
    assert await target.count("saga_steps") == 2 * len(kept)


async def test_retention_uses_the_finish_time_not_the_creation_time(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(store, definition)
    assert created.lease is not None
    clock.advance(3600)
    await store.write(created.lease, saga_change(SagaStatus.COMPLETED))
    cutoff = clock.now - timedelta(seconds=60)
    assert await store.delete_finished_before(cutoff) == 0
    assert await store.delete_finished_before(clock.now + timedelta(seconds=1)) == 1


async def test_ping_answers_on_a_healthy_store(store: SagaStore) -> None:
    await store.ping()
