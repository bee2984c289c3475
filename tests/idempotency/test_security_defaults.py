"""Defaults that keep one client's stored answer from another and bound a client's wait.

Cookie sessions are a tenant boundary like ``Authorization`` (``scope_headers`` default), and
``Prefer: wait=N`` never holds a request longer than ``lock_timeout``, whatever ``concurrent``
says. In-process sidecars on real sockets, in front of the counting upstream, on Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from idempotency.conftest import SidecarFactory
from idempotency.upstream import CountingUpstream
from proxy.config import IdempotencyConfig

KEY = "Idempotency-Key"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps no cookies of its own."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def post(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, bool, bytes]:
    """Status, whether it was a replay, and the body of one POST."""
    async with client.post(url, data=b'{"amount": 1}', headers=headers) as response:
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        return response.status, replayed, await response.read()


def test_cookie_is_a_default_scope_header() -> None:
    assert IdempotencyConfig().scope_headers == ("Authorization", "Cookie")


async def test_two_cookie_sessions_with_the_same_key_never_share_an_answer(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url)
    alice = await post(client, f"{proxy.url}/charge", {KEY: "k-1", "Cookie": "session=alice"})
    bob = await post(client, f"{proxy.url}/charge", {KEY: "k-1", "Cookie": "session=bob"})
    again = await post(client, f"{proxy.url}/charge", {KEY: "k-1", "Cookie": "session=alice"})
    assert alice[:2] == (201, False)
    assert bob[:2] == (201, False), "bob was handed alice's stored answer"
    assert bob[2] != alice[2]
    assert again == (201, True, alice[2])
    assert upstream.executions["/charge"] == 2


@pytest.mark.parametrize("concurrent", ["reject", "wait"])
async def test_prefer_wait_is_capped_at_lock_timeout(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
    concurrent: str,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url, idempotency={"lock_timeout": "1s", "concurrent": concurrent})
    target = f"{proxy.url}/slow/3"
    first = asyncio.create_task(post(client, target, {KEY: f"w-{concurrent}"}))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    waited = await post(client, target, {KEY: f"w-{concurrent}", "Prefer": "wait=300"})
    elapsed = time.monotonic() - started
    assert waited[0] == 409
    assert 0.8 <= elapsed < 2.0, elapsed
    assert (await first)[0] == 201
    assert upstream.executions["/slow/3"] == 1
