"""Leases: claims never overlap, expiry and next_run_at decide when a saga is claimable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from saga_runner.errors import SagaNotFound
from saga_runner.records import Lease
from saga_runner.states import SagaStatus
from saga_runner.store import SagaStore
from saga_store.helpers import FakeClock, saga_change, start_saga

OpenStore = Callable[[], Awaitable[SagaStore]]


async def _released(store: SagaStore, definition: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        created = await start_saga(store, definition)
        assert created.lease is not None
        assert await store.release(created.lease)
        ids.append(created.saga.id)
    return ids


async def test_a_live_lease_is_not_claimable_until_it_expires(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(store, definition, lease_seconds=10)
    assert await store.claim_due("replica-b", 10, 10) == []
    clock.advance(9.999)
    assert await store.claim_due("replica-b", 10, 10) == []
    clock.advance(0.001)
    [claim] = await store.claim_due("replica-b", 10, 10)
    assert claim.saga.id == created.saga.id
    assert claim.lease == Lease(created.saga.id, "replica-b", 2)
    assert claim.saga.owner == "replica-b"
    assert claim.saga.lease_expires_at == clock.now + timedelta(seconds=10)


async def test_renewing_keeps_the_saga_away_from_other_replicas(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(store, definition, lease_seconds=10)
    assert created.lease is not None
    clock.advance(8)
    assert await store.renew(created.lease, 10)
    clock.advance(8)
    assert await store.claim_due("replica-b", 10, 10) == []
    clock.advance(2)
    assert [c.saga.id for c in await store.claim_due("replica-b", 10, 10)] == [created.saga.id]


async def test_renew_does_not_change_updated_at(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(store, definition, lease_seconds=10)
    assert created.lease is not None
    clock.advance(5)
    assert await store.renew(created.lease, 10)
    saga = await store.get_instance(created.saga.id)
    assert saga.updated_at == created.saga.updated_at
    assert saga.lease_expires_at == clock.now + timedelta(seconds=10)


async def test_a_released_saga_is_claimable_at_once(store: SagaStore, definition: str) -> None:
    [saga_id] = await _released(store, definition, 1)
    released = await store.get_instance(saga_id)
    assert (released.owner, released.lease_expires_at) == (None, None)
    [claim] = await store.claim_due("replica-b", 10, 10)
    assert (claim.saga.id, claim.lease.version) == (saga_id, 2)


async def test_next_run_at_is_honoured_and_cleared_by_the_claim(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(store, definition)
    assert created.lease is not None
    later = clock.now + timedelta(seconds=30)
    assert await store.release(created.lease, next_run_at=later)
    assert (await store.get_instance(created.saga.id)).next_run_at == later
    clock.advance(29)
    assert await store.claim_due("replica-b", 10, 10) == []
    clock.advance(1)
    [claim] = await store.claim_due("replica-b", 10, 10)
    assert claim.saga.next_run_at is None


async def test_next_run_at_in_the_future_wins_over_an_expired_lease(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(store, definition, lease_seconds=5)
    assert created.lease is not None
    await store.write(created.lease, saga_change(next_run_at=clock.now + timedelta(seconds=60)))
    clock.advance(10)
    assert await store.claim_due("replica-b", 10, 10) == []
    clock.advance(50)
    assert len(await store.claim_due("replica-b", 10, 10)) == 1


async def test_only_running_and_compensating_sagas_are_claimed(
    store: SagaStore, definition: str
) -> None:
    wanted = {}
    for status in SagaStatus:
        created = await start_saga(store, definition)
        assert created.lease is not None
        lease = created.lease
        if status is not SagaStatus.RUNNING:
            path = {
                SagaStatus.COMPENSATING: [SagaStatus.COMPENSATING],
                SagaStatus.COMPLETED: [SagaStatus.COMPLETED],
                SagaStatus.COMPENSATED: [SagaStatus.COMPENSATING, SagaStatus.COMPENSATED],
                SagaStatus.FAILED: [SagaStatus.COMPENSATING, SagaStatus.FAILED],
            }[status]
            for step in path:
                await store.write(lease, saga_change(step))
        await store.release(lease)
        wanted[created.saga.id] = status
    claimed = {c.saga.id for c in await store.claim_due("replica-b", 10, 100)}
    assert {wanted[i] for i in claimed} == {SagaStatus.RUNNING, SagaStatus.COMPENSATING}
    assert len(claimed) == 2


async def test_claim_due_takes_the_oldest_first_up_to_the_limit(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    ids = []
    for _ in range(5):
        ids += await _released(store, definition, 1)
        clock.advance(1)
    first = await store.claim_due("replica-b", 10, 2)
    second = await store.claim_due("replica-b", 10, 2)
    third = await store.claim_due("replica-b", 10, 2)
    assert [c.saga.id for c in first + second + third] == ids
    assert await store.claim_due("replica-b", 10, 2) == []


async def test_concurrent_claimers_never_get_the_same_saga(
    store: SagaStore, definition: str, open_store: OpenStore
) -> None:
    ids = await _released(store, definition, 40)
    claimers = [await open_store() for _ in range(8)]
    claimed: list[str] = []
    for _ in range(3):
        rounds = await asyncio.gather(
            *(c.claim_due(f"replica-{n}", 30, 4) for n, c in enumerate(claimers)),
            *(c.claim_due(f"replica-{n}-bis", 30, 3) for n, c in enumerate(claimers)),
        )
        claimed += [claim.saga.id for batch in rounds for claim in batch]
    assert len(claimed) == len(set(claimed)), "a saga was handed to two claimers"
    assert sorted(claimed) == sorted(ids)
    for saga_id in ids:
        assert (await store.get_instance(saga_id)).lease_version == 2


async def test_claim_one_refuses_a_live_lease_unless_forced(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(store, definition, lease_seconds=10)
    assert await store.claim_one(created.saga.id, "operator:ann", 30) is None
    forced = await store.claim_one(created.saga.id, "operator:ann", 30, force=True)
    assert forced is not None and forced.lease == Lease(created.saga.id, "operator:ann", 2)
    clock.advance(31)
    again = await store.claim_one(created.saga.id, "replica-c", 30)
    assert again is not None and again.lease.version == 3


async def test_claim_one_claims_failed_sagas_for_an_operator(
    store: SagaStore, definition: str
) -> None:
    created = await start_saga(store, definition)
    assert created.lease is not None
    await store.write(created.lease, saga_change(SagaStatus.COMPENSATING))
    await store.write(created.lease, saga_change(SagaStatus.FAILED))
    await store.release(created.lease)
    claim = await store.claim_one(created.saga.id, "operator:ann", 30)
    assert claim is not None and claim.saga.status is SagaStatus.FAILED


async def test_claim_one_of_an_unknown_saga_raises_not_found(store: SagaStore) -> None:
    with pytest.raises(SagaNotFound):
        await store.claim_one("no-such-saga", "operator:ann", 30, force=True)


async def test_forced_claims_racing_each_other_get_distinct_versions(
    store: SagaStore, definition: str, open_store: OpenStore
) -> None:
    created = await start_saga(store, definition)
    others = [await open_store() for _ in range(5)]
    claims = await asyncio.gather(
        *(o.claim_one(created.saga.id, f"op-{n}", 30, force=True) for n, o in enumerate(others))
    )
    versions = sorted(c.lease.version for c in claims if c is not None)
    assert versions == [2, 3, 4, 5, 6]
    final = await store.get_instance(created.saga.id)
    assert final.lease_version == 6
    winners = [c for c in claims if c is not None and c.lease.version == 6]
    assert final.owner == winners[0].lease.owner


async def test_a_release_keeps_the_backoff_already_recorded(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    created = await start_saga(store, definition, lease_seconds=5)
    assert created.lease is not None
    due = clock.now + timedelta(seconds=60)
    await store.write(created.lease, saga_change(next_run_at=due))

    assert await store.release(created.lease)  # a graceful shutdown mid-backoff

    saga = await store.get_instance(created.saga.id)
    assert (saga.owner, saga.next_run_at) == (None, due)
    clock.advance(30)
    assert await store.claim_due("replica-b", 10, 10) == [], "nobody calls before Retry-After"
    clock.advance(31)
    assert len(await store.claim_due("replica-b", 10, 10)) == 1


async def test_next_run_is_the_earliest_due_time_of_the_active_sagas_nobody_holds(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    assert await store.next_run() is None
    soon, later = clock.now + timedelta(seconds=5), clock.now + timedelta(seconds=60)
    held = await start_saga(store, definition)  # sleeping a backoff, still held: not counted
    assert held.lease is not None
    await store.write(held.lease, saga_change(next_run_at=clock.now + timedelta(seconds=1)))
    finished = await start_saga(store, definition)
    assert finished.lease is not None
    await store.write(finished.lease, saga_change(SagaStatus.COMPLETED, next_run_at=soon))
    await store.release(finished.lease)
    assert await store.next_run() is None
    for status, at in ((SagaStatus.RUNNING, later), (SagaStatus.COMPENSATING, soon)):
        created = await start_saga(store, definition)
        assert created.lease is not None
        await store.write(created.lease, saga_change(status))
        assert await store.release(created.lease, next_run_at=at)
    assert await store.next_run() == soon
    await _released(store, definition, 1)  # due at once (no next_run_at): the claim's business
    assert await store.next_run() == soon
    clock.advance(60)
    assert len(await store.claim_due("replica-b", 10, 10)) == 4
    assert await store.next_run() is None
