"""A Redis outage shorter than ``lock_timeout`` never lets a retry execute the request again.

Redis is reached through a ``CuttableProxy``: the test cuts it while the first request is with
the app, so every lease renewal in that window fails, then restores it before the lease ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from idempotency.conftest import SidecarFactory, with_prefix
from idempotency.cuttable import CuttableProxy
from idempotency.upstream import CountingUpstream

KEY = "Idempotency-Key"


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[CuttableProxy]:
    """A cuttable TCP proxy in front of the shared test Redis."""
    target = urlsplit(redis_url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    yield proxy
    await proxy.close()


def through(redis_proxy: CuttableProxy, redis_url: str, prefix: str) -> str:
    """The store URL reaching the test Redis through ``redis_proxy``, under ``prefix``."""
    path = urlsplit(redis_url).path or "/0"
    return with_prefix(f"redis://127.0.0.1:{redis_proxy.port}{path}", prefix)


async def post(session: aiohttp.ClientSession, url: str, key: str) -> tuple[int, dict[str, str]]:
    """POST a small body with ``key``; the status and headers."""
    async with session.post(url, data=b'{"n": 1}', headers={KEY: key}) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_an_outage_shorter_than_the_lease_keeps_the_lock_and_the_retry_never_executes(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    redis_proxy: CuttableProxy,
    redis_url: str,
    idem_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream, url = counting_upstream
    store = through(redis_proxy, redis_url, idem_prefix)
    proxy = await sidecar(url, idempotency={"store": store, "lock_timeout": "3s"})
    caplog.set_level(logging.WARNING, logger="saga_sidecar.idempotency")
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        first = asyncio.create_task(post(session, f"{proxy.url}/slow/4.5", "outage-1"))
        await asyncio.sleep(0.9)
        await redis_proxy.cut()  # renewals due at 1 s and 2 s fail
        await asyncio.sleep(2.5 - (time.monotonic() - started))
        await redis_proxy.restore()  # 1.6 s later, 0.5 s before the lease would end
        await asyncio.sleep(3.6 - (time.monotonic() - started))
        status, headers = await post(session, f"{proxy.url}/slow/4.5", "outage-1")
        assert status == 409, "the retry must see the request still in flight"
        assert (await first)[0] == 201
        status, headers = await post(session, f"{proxy.url}/slow/4.5", "outage-1")
    assert status == 201 and headers.get("Idempotent-Replayed") == "true"
    assert upstream.executions["/slow/4.5"] == 1
    assert "store unreachable" in caplog.text
    assert "another request" not in caplog.text


async def test_an_answer_is_stored_when_the_lock_is_simply_gone(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    redis_store_url: str,
    redis_url: str,
    idem_prefix: str,
) -> None:
    """A lock lost with the store's data (nobody else holds the key): the answer is stored."""
    from redis.asyncio import Redis

    upstream, url = counting_upstream
    proxy = await sidecar(url)
    client = Redis.from_url(redis_url)
    try:
        async with aiohttp.ClientSession() as session:
            first = asyncio.create_task(post(session, f"{proxy.url}/slow/0.6", "gone-1"))
            await asyncio.sleep(0.3)
            keys = [key async for key in client.scan_iter(match=f"{idem_prefix}:{{*")]
            assert len(keys) == 1
            await client.delete(*keys)  # as a Redis restart without persistence would
            assert (await first)[0] == 201
            status, headers = await post(session, f"{proxy.url}/slow/0.6", "gone-1")
    finally:
        await client.aclose()
    assert status == 201 and headers.get("Idempotent-Replayed") == "true"
    assert upstream.executions["/slow/0.6"] == 1


async def test_the_renewer_stops_once_a_large_streamed_answer_is_settled(
    sidecar: SidecarFactory,
    upstream_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body over max_body streams on after its marker is stored: no false "lease lost"."""

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=201)
        await response.prepare(request)
        for _ in range(12):
            await response.write(b"x" * 1024)
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/stream", trickle)
    served = await upstream_server(app)
    proxy = await sidecar(
        served.url,
        idempotency={"lock_timeout": "0.3s", "max_body": "1KiB"},
        upstream={"url": served.url, "timeout": "0.2s"},
    )
    caplog.set_level(logging.WARNING, logger="saga_sidecar.idempotency")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/stream", data=b"{}", headers={KEY: "s-1"}) as r,
    ):
        body = await r.read()
    assert r.status == 201 and len(body) == 12 * 1024
    assert "lease lost" not in caplog.text


async def test_an_acquire_that_timed_out_but_ran_in_redis_does_not_leave_the_key_locked(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    redis_proxy: CuttableProxy,
    redis_url: str,
    idem_prefix: str,
) -> None:
    upstream, url = counting_upstream
    store = through(redis_proxy, redis_url, idem_prefix) + "&socket_timeout=0.3"
    proxy = await sidecar(url, idempotency={"store": store, "lock_timeout": "5s"})
    async with aiohttp.ClientSession() as session:
        assert (await post(session, f"{proxy.url}/charge", "warm-up"))[0] == 201
        redis_proxy.reply_delay = 0.6  # the acquire runs in Redis; its reply comes too late
        status, _ = await post(session, f"{proxy.url}/charge", "late-1")
        assert status == 503
        redis_proxy.reply_delay = 0.0
        await asyncio.sleep(1.0)
        status, _ = await post(session, f"{proxy.url}/charge", "late-1")
    assert status == 201, "the retry must not meet the lock its timed-out acquire left"
    assert upstream.executions["/charge"] == 2
