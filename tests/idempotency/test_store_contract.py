"""The store contract: every backend (memory://, redis://) behaves the same, on real servers."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.idempotency.record import StoredResponse
from proxy.idempotency.store import (
    Acquired,
    Completed,
    IdempotencyStore,
    InFlight,
    new_token,
)

LEASE = 5.0
TTL = 60.0


def record(fingerprint: str = "fp-1", body: bytes = b'{"ok": true}') -> StoredResponse:
    """A stored answer for ``fingerprint``."""
    return StoredResponse(
        status=201,
        headers=(("Content-Type", "application/json"), ("ETag", '"v1"')),
        body=body,
        fingerprint=fingerprint,
        created=time.time(),
    )


async def acquired(
    store: IdempotencyStore, key: str, fp: str = "fp-1", lease: float = LEASE
) -> Acquired:
    """Acquire ``key`` and assert this call got the lock."""
    state = await store.acquire(key, fp, new_token(), lease)
    assert isinstance(state, Acquired)
    return state


async def test_first_acquire_takes_the_lock_and_a_duplicate_sees_it_in_flight(
    store: IdempotencyStore,
) -> None:
    await acquired(store, "k1", "fp-1")
    duplicate = await store.acquire("k1", "fp-2", new_token(), LEASE)
    assert duplicate == InFlight("fp-1")


async def test_completed_record_is_returned_to_later_acquires(store: IdempotencyStore) -> None:
    lock = await acquired(store, "k1")
    stored = record()
    assert await store.complete(lock, stored, TTL)
    state = await store.acquire("k1", "fp-1", new_token(), LEASE)
    assert isinstance(state, Completed)
    assert state.record.status == 201
    assert state.record.body == b'{"ok": true}'
    assert state.record.headers == (("Content-Type", "application/json"), ("ETag", '"v1"'))
    assert state.record.fingerprint == "fp-1"
    assert state.record.body_retained
    assert abs(state.record.created - stored.created) < 0.01


async def test_large_compressible_body_round_trips(store: IdempotencyStore) -> None:
    lock = await acquired(store, "k1")
    body = b"0123456789" * 100_000
    assert await store.complete(lock, record(body=body), TTL)
    state = await store.acquire("k1", "fp-1", new_token(), LEASE)
    assert isinstance(state, Completed) and state.record.body == body


async def test_a_scope_budget_refuses_charges_past_it_until_answers_expire(
    store: IdempotencyStore,
) -> None:
    assert await store.charge("scope-a", "k1", 600, 0.3, 1000)
    assert await store.charge("scope-a", "k1", 600, 0.3, 1000)  # a retried charge counts once
    assert not await store.charge("scope-a", "k2", 600, TTL, 1000)
    assert await store.charge("scope-b", "k2", 600, TTL, 1000)
    await asyncio.sleep(0.4)
    assert await store.charge("scope-a", "k2", 600, TTL, 1000)
    assert not await store.charge("scope-a", "k3", 600, TTL, 1000)


async def test_release_lets_the_next_request_acquire(store: IdempotencyStore) -> None:
    lock = await acquired(store, "k1")
    assert await store.release(lock)
    await acquired(store, "k1")


async def test_reacquire_with_own_token_is_acquired_not_in_flight(store: IdempotencyStore) -> None:
    token = new_token()
    assert isinstance(await store.acquire("k1", "fp", token, LEASE), Acquired)
    assert await store.acquire("k1", "fp", token, LEASE) == Acquired("k1", token)


async def test_lock_expires_after_its_lease(store: IdempotencyStore) -> None:
    await acquired(store, "k1", lease=0.1)
    await asyncio.sleep(0.2)
    await acquired(store, "k1")


async def test_renew_extends_the_lease(store: IdempotencyStore) -> None:
    lock = await acquired(store, "k1", lease=0.2)
    for _ in range(3):  # 0.3 s in all: past the original lease
        await asyncio.sleep(0.1)
        assert await store.renew(lock, 0.2)
    assert isinstance(await store.acquire("k1", "fp-1", new_token(), LEASE), InFlight)


async def test_record_expires_after_its_ttl(store: IdempotencyStore) -> None:
    lock = await acquired(store, "k1")
    assert await store.complete(lock, record(), 0.1)
    await asyncio.sleep(0.2)
    await acquired(store, "k1")


async def test_holder_whose_lease_was_taken_over_cannot_overwrite_or_delete(
    store: IdempotencyStore,
) -> None:
    old = await acquired(store, "k1", "fp-1", lease=0.1)
    await asyncio.sleep(0.2)
    new = await acquired(store, "k1", "fp-1")

    assert not await store.renew(old, LEASE)
    assert not await store.complete(old, record(body=b"old holder"), TTL)
    assert not await store.release(old)
    assert await store.acquire("k1", "fp-1", new_token(), LEASE) == InFlight("fp-1")

    assert await store.complete(new, record(body=b"new holder"), TTL)
    assert not await store.complete(old, record(body=b"old holder"), TTL)
    state = await store.acquire("k1", "fp-1", new_token(), LEASE)
    assert isinstance(state, Completed) and state.record.body == b"new holder"


async def test_completed_record_cannot_be_released_by_its_former_holder(
    store: IdempotencyStore,
) -> None:
    lock = await acquired(store, "k1")
    assert await store.complete(lock, record(), TTL)
    assert not await store.release(lock)
    assert not await store.renew(lock, LEASE)
    assert isinstance(await store.acquire("k1", "fp-1", new_token(), LEASE), Completed)


async def test_keys_are_independent(store: IdempotencyStore) -> None:
    lock = await acquired(store, "k1")
    await acquired(store, "k2")
    assert await store.complete(lock, record(), TTL)
    assert isinstance(await store.acquire("k2", "fp-1", new_token(), LEASE), InFlight)


async def test_waiter_is_woken_by_completion_without_polling(store: IdempotencyStore) -> None:
    store.poll_interval = 30.0  # only a notification can wake the waiter in time
    lock = await acquired(store, "k1")

    async def finish_later() -> None:
        await asyncio.sleep(0.3)
        assert await store.complete(lock, record(), TTL)

    finisher = asyncio.create_task(finish_later())
    started = time.monotonic()
    state = await store.wait("k1", "fp-1", new_token(), LEASE, seconds=10)
    await finisher
    assert isinstance(state, Completed)
    assert time.monotonic() - started < 1.5


async def test_waiter_acquires_when_the_holder_releases(store: IdempotencyStore) -> None:
    store.poll_interval = 30.0
    lock = await acquired(store, "k1")
    token = new_token()

    async def release_later() -> None:
        await asyncio.sleep(0.2)
        assert await store.release(lock)

    releaser = asyncio.create_task(release_later())
    state = await store.wait("k1", "fp-1", token, LEASE, seconds=10)
    await releaser
    assert state == Acquired("k1", token)


async def test_many_waiters_on_one_key_are_all_woken(store: IdempotencyStore) -> None:
    store.poll_interval = 30.0
    lock = await acquired(store, "k1")
    waiters = [
        asyncio.create_task(store.wait("k1", "fp-1", new_token(), LEASE, seconds=10))
        for _ in range(20)
    ]
    await asyncio.sleep(0.3)
    assert await store.complete(lock, record(), TTL)
    async with asyncio.timeout(2):
        states = await asyncio.gather(*waiters)
    assert all(isinstance(state, Completed) for state in states)


async def test_wait_gives_up_after_its_time_and_reports_in_flight(
    store: IdempotencyStore,
) -> None:
    await acquired(store, "k1")
    started = time.monotonic()
    state = await store.wait("k1", "fp-1", new_token(), LEASE, seconds=0.3)
    assert state == InFlight("fp-1")
    assert 0.25 < time.monotonic() - started < 2


async def test_waiter_takes_over_when_the_holders_lease_expires(store: IdempotencyStore) -> None:
    store.poll_interval = 0.1  # an expired lease sends no notification: the slow poll finds it
    await acquired(store, "k1", lease=0.3)
    token = new_token()
    state = await store.wait("k1", "fp-1", token, LEASE, seconds=5)
    assert state == Acquired("k1", token)


async def test_wait_for_another_fingerprint_returns_at_once(store: IdempotencyStore) -> None:
    await acquired(store, "k1", "fp-1")
    started = time.monotonic()
    assert await store.wait("k1", "fp-other", new_token(), LEASE, seconds=5) == InFlight("fp-1")
    assert time.monotonic() - started < 1


async def test_secret_is_stable_and_long(store: IdempotencyStore) -> None:
    first = await store.secret()
    assert len(first) >= 32
    assert await store.secret() == first


async def test_ping_answers(store: IdempotencyStore) -> None:
    await store.ping()


@pytest.mark.parametrize("count", [50])
async def test_concurrent_acquires_grant_exactly_one_lock(
    store: IdempotencyStore, count: int
) -> None:
    states = await asyncio.gather(
        *(store.acquire("k1", "fp-1", new_token(), LEASE) for _ in range(count))
    )
    assert sum(isinstance(state, Acquired) for state in states) == 1
    assert sum(isinstance(state, InFlight) for state in states) == count - 1
