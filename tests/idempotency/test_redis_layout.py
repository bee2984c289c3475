"""What the Redis store writes: key layout, hash tags, no raw client values, the shared secret."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from redis.asyncio import Redis

from idempotency.conftest import SidecarFactory
from idempotency.upstream import CountingUpstream
from proxy.errors import StoreUnavailable
from proxy.idempotency.record import StoredResponse
from proxy.idempotency.redis_store import RedisStore
from proxy.idempotency.store import (
    Acquired,
    Completed,
    new_token,
    store_from_url,
)


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A plain client on the test Redis."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def keys_under(client: Redis, prefix: str) -> list[bytes]:
    """Every key under ``prefix``."""
    return sorted([key async for key in client.scan_iter(match=f"{prefix}:*")])


async def test_records_live_under_one_hash_tagged_key_without_raw_values(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    raw_redis: Redis,
    idem_prefix: str,
) -> None:
    _, url = counting_upstream
    proxy = await sidecar(url)
    secret_token = "Bearer sk_live_VERY_SECRET"
    key = "order-4711-visible-key"
    async with aiohttp.ClientSession() as client:
        headers = {"Idempotency-Key": key, "Authorization": secret_token}
        async with client.post(f"{proxy.url}/charge", data=b"{}", headers=headers) as response:
            assert response.status == 201

    keys = await keys_under(raw_redis, idem_prefix)
    budget = [k for k in keys if k.startswith(f"{idem_prefix}:budget:".encode())]
    record_keys = [k for k in keys if k != f"{idem_prefix}:secret".encode() and k not in budget]
    assert len(record_keys) == 1
    ledger = f"{idem_prefix}:budget:{{".encode()
    assert len(budget) == 2 and budget[0].startswith(ledger) and budget[1] == budget[0] + b":bytes"
    (member,) = await raw_redis.zrange(budget[0], 0, -1)
    assert member.endswith(record_keys[0][len(idem_prefix) + 2 : -1])
    for raw in (secret_token.encode(), b"sk_live", key.encode()):
        assert raw not in budget[0] and raw not in member
    name = record_keys[0].decode()
    assert name.startswith(f"{idem_prefix}:{{") and name.endswith("}")
    assert len(name) == len(idem_prefix) + 1 + 64 + 2
    value = await raw_redis.get(record_keys[0])
    assert value is not None and value.startswith(b"R1")
    for raw in (secret_token.encode(), b"sk_live", key.encode()):
        assert raw not in name.encode() and raw not in value
    ttl = await raw_redis.pttl(record_keys[0])
    assert 86_000_000 < ttl <= 86_400_000


async def test_stores_with_one_prefix_share_the_secret_and_see_each_others_records(
    redis_store_url: str,
) -> None:
    first, second = store_from_url(redis_store_url), store_from_url(redis_store_url)
    try:
        assert await first.secret() == await second.secret()
        lock = await first.acquire("k", "fp", new_token(), 5)
        assert isinstance(lock, Acquired)

        assert await first.complete(lock, StoredResponse(200, (), b"x", "fp", 0.0), 60)
        assert isinstance(await second.acquire("k", "fp", new_token(), 5), Completed)
    finally:
        await first.close()
        await second.close()


async def test_a_lost_secret_is_restored_from_a_sidecar_that_remembers_it(
    redis_store_url: str, raw_redis: Redis, idem_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    remembering, fresh = store_from_url(redis_store_url), store_from_url(redis_store_url)
    try:
        known = await remembering.secret()
        await raw_redis.delete(f"{idem_prefix}:secret")
        monkeypatch.setattr("proxy.idempotency.store.SECRET_REFRESH_SECONDS", 0.0)
        assert await remembering.secret() == known
        assert await fresh.secret() == known
    finally:
        await remembering.close()
        await fresh.close()


async def test_unreadable_value_is_a_store_error(
    redis_store_url: str, raw_redis: Redis, idem_prefix: str
) -> None:
    store = store_from_url(redis_store_url)
    assert isinstance(store, RedisStore)
    try:
        await raw_redis.set(store.redis_key("k"), b"garbage")
        with pytest.raises(StoreUnavailable, match="unreadable"):
            await store.acquire("k", "fp", new_token(), 5)
    finally:
        await store.close()
