"""``idempotency.max_stored_bytes_per_scope``: one scope cannot fill the store with answers.

Each scope (the ``scope_headers`` values, e.g. one API token) may keep at most that many bytes
of stored answers at a time. An answer past the budget is still delivered, but only a "not
retained" marker is stored: its duplicates get the 409 that a too-large body gets, and never
execute again. Other scopes keep their own budget.
"""

from __future__ import annotations

import aiohttp
import pytest
from redis.asyncio import Redis

from idempotency.conftest import SidecarFactory
from idempotency.test_http_semantics import send
from idempotency.upstream import CountingUpstream

ANSWER = 300_000
BUDGET = 1024**2


async def redis_bytes_under(redis_url: str, prefix: str) -> int:
    """Bytes Redis reports for every key under ``prefix``."""
    client = Redis.from_url(redis_url)
    try:
        total = 0
        async for key in client.scan_iter(match=f"{prefix}:*"):
            total += await client.memory_usage(key) or 0
        return total
    finally:
        await client.aclose()


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_answers_past_the_scope_budget_are_delivered_but_not_stored(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    redis_url: str,
    idem_prefix: str,
    store: str,
) -> None:
    upstream, url = counting_upstream
    settings: dict[str, object] = {"max_stored_bytes_per_scope": BUDGET}
    if store == "memory":
        settings["store"] = "memory://"
    proxy = await sidecar(url, idempotency=settings)
    alice = {"Authorization": "Bearer alice"}
    async with aiohttp.ClientSession() as client:
        firsts = [
            await send(client, "POST", f"{proxy.url}/random/{ANSWER}?n={n}", f"k{n}", headers=alice)
            for n in range(8)
        ]
        duplicates = [
            await send(client, "POST", f"{proxy.url}/random/{ANSWER}?n={n}", f"k{n}", headers=alice)
            for n in range(8)
        ]
        bob = {"Authorization": "Bearer bob"}
        bob_first = await send(client, "POST", f"{proxy.url}/random/{ANSWER}", "k0", headers=bob)
        bob_again = await send(client, "POST", f"{proxy.url}/random/{ANSWER}", "k0", headers=bob)

    assert all(r.status == 201 and len(r.body) == ANSWER for r in firsts)
    stored = BUDGET // (ANSWER + 1024)
    assert [d.replayed for d in duplicates] == [True] * stored + [False] * (8 - stored)
    for first, duplicate in zip(firsts[:stored], duplicates[:stored], strict=True):
        assert duplicate.body == first.body
    for duplicate in duplicates[stored:]:
        assert duplicate.status == 409
        assert duplicate.problem()["type"].endswith("idempotency-not-retained")
    assert upstream.executions == {f"/random/{ANSWER}": 9}  # every request ran once
    assert bob_again.replayed and bob_again.body == bob_first.body
    assert proxy.metric("idempotency_not_stored_total", reason="scope_budget") == 8 - stored
    if store == "redis":
        assert await redis_bytes_under(redis_url, idem_prefix) < 2 * BUDGET
