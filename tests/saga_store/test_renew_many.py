"""``renew_many``: every lease a process holds renewed in one call, the lost ones reported."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from saga_runner.records import Lease
from saga_runner.store import SagaStore
from saga_store.helpers import FakeClock, start_saga

OpenStore = Callable[[], Awaitable[SagaStore]]


async def _leases(
    store: SagaStore, definition: str, count: int, lease_seconds: float = 30.0
) -> list[Lease]:
    leases = []
    for _ in range(count):
        created = await start_saga(store, definition, steps=0, lease_seconds=lease_seconds)
        assert created.lease is not None
        leases.append(created.lease)
    return leases


async def test_renew_many_extends_every_lease_without_touching_updated_at(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    leases = await _leases(store, definition, 3, lease_seconds=10)
    before = [await store.get_instance(lease.saga_id) for lease in leases]
    clock.advance(8)

    assert await store.renew_many(leases, 10) == frozenset()

    for lease, old in zip(leases, before, strict=True):
        saga = await store.get_instance(lease.saga_id)
        assert saga.lease_expires_at == clock.now + timedelta(seconds=10)
        assert (saga.owner, saga.lease_version) == (lease.owner, lease.version)
        assert saga.updated_at == old.updated_at
    clock.advance(9)
    assert await store.claim_due("replica-b", 10, 10) == []


async def test_a_lease_taken_over_is_reported_lost_and_the_new_holder_keeps_its_expiry(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    taken, kept = await _leases(store, definition, 2, lease_seconds=10)
    claim = await store.claim_one(taken.saga_id, "operator:ann", 30, force=True)
    assert claim is not None
    clock.advance(5)

    assert await store.renew_many([taken, kept], 10) == {taken}

    saga = await store.get_instance(taken.saga_id)
    assert (saga.owner, saga.lease_version) == ("operator:ann", 2)
    assert saga.lease_expires_at == claim.saga.lease_expires_at
    renewed = await store.get_instance(kept.saga_id)
    assert renewed.lease_expires_at == clock.now + timedelta(seconds=10)


async def test_an_older_lease_of_the_same_owner_is_lost_while_its_newer_one_is_renewed(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    [old] = await _leases(store, definition, 1, lease_seconds=10)
    clock.advance(11)
    [claim] = await store.claim_due(old.owner, 10, 10)
    assert claim.lease == Lease(old.saga_id, old.owner, old.version + 1)
    clock.advance(5)

    assert await store.renew_many([old, claim.lease], 10) == {old}

    saga = await store.get_instance(old.saga_id)
    assert saga.lease_version == claim.lease.version
    assert saga.lease_expires_at == clock.now + timedelta(seconds=10)


async def test_a_released_lease_is_reported_lost_and_not_revived(
    store: SagaStore, definition: str
) -> None:
    [lease] = await _leases(store, definition, 1)
    assert await store.release(lease)

    assert await store.renew_many([lease], 10) == {lease}

    saga = await store.get_instance(lease.saga_id)
    assert (saga.owner, saga.lease_expires_at) == (None, None)
    assert [c.saga.id for c in await store.claim_due("replica-b", 10, 10)] == [lease.saga_id]


async def test_a_lease_on_a_saga_that_does_not_exist_is_reported_lost(
    store: SagaStore, definition: str
) -> None:
    [held] = await _leases(store, definition, 1)
    ghost = Lease("no-such-saga", held.owner, held.version)

    assert await store.renew_many([ghost, held], 10) == {ghost}


async def test_an_expired_lease_nobody_claimed_is_renewed_like_renew_does(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    [lease] = await _leases(store, definition, 1, lease_seconds=10)
    clock.advance(60)

    assert await store.renew_many([lease], 10) == frozenset()
    assert await store.claim_due("replica-b", 10, 10) == []


async def test_nothing_to_renew_and_duplicates_are_fine(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    assert await store.renew_many([], 10) == frozenset()
    [lease] = await _leases(store, definition, 1, lease_seconds=10)
    clock.advance(3)

    assert await store.renew_many([lease, lease], 10) == frozenset()
    saga = await store.get_instance(lease.saga_id)
    assert saga.lease_expires_at == clock.now + timedelta(seconds=10)


async def test_renew_many_refuses_a_lease_length_that_is_not_positive(
    store: SagaStore, definition: str
) -> None:
    leases = await _leases(store, definition, 1)
    with pytest.raises(ValueError, match="lease_seconds"):
        await store.renew_many(leases, 0)


async def test_hundreds_of_leases_are_renewed_and_exactly_the_lost_ones_reported(
    store: SagaStore, definition: str, clock: FakeClock
) -> None:
    leases = await _leases(store, definition, 700, lease_seconds=10)
    released = set(leases[::7])
    for lease in released:
        await store.release(lease)
    clock.advance(8)

    assert await store.renew_many(leases, 10) == released

    clock.advance(9)
    claimable = {c.saga.id for c in await store.claim_due("replica-b", 10, 1000)}
    assert claimable == {lease.saga_id for lease in released}


async def test_renewal_racing_a_claim_on_expired_leases_gives_each_saga_to_exactly_one(
    store: SagaStore, definition: str, clock: FakeClock, open_store: OpenStore
) -> None:
    leases = await _leases(store, definition, 60, lease_seconds=10)
    clock.advance(11)
    claimer = await open_store()

    lost, *claimed = await asyncio.gather(
        store.renew_many(leases, 10),
        *(claimer.claim_due("replica-b", 10, 7) for _ in range(4)),
    )

    taken = {claim.saga.id for batch in claimed for claim in batch}
    assert {lease.saga_id for lease in lost} == taken
    for lease in leases:
        saga = await store.get_instance(lease.saga_id)
        expected_owner = "replica-b" if lease.saga_id in taken else lease.owner
        assert saga.owner == expected_owner
        assert saga.lease_expires_at == clock.now + timedelta(seconds=10)
