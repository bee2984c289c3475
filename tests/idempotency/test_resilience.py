"""Failures around the protected call: client disconnects, long calls, Redis going away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from idempotency.conftest import RedisServer, SidecarFactory, with_prefix
from idempotency.upstream import CountingUpstream
from proxy.keys import READINESS

KEY = "Idempotency-Key"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def post(
    client: aiohttp.ClientSession, url: str, key: str, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    """POST and read the whole answer."""
    async with client.post(url, data=b'{"amount": 1}', headers={KEY: key}, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


async def send_and_hang_up(url: str, path: str, key: str) -> None:
    """Send a complete request over a raw socket, then close before the answer arrives."""
    host, port = url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    body = b'{"amount": 1}'
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{KEY}: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_client_disconnect_does_not_cancel_the_call_and_the_retry_is_a_replay(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
    handler_cancellation: bool,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url, runner={"handler_cancellation": handler_cancellation})
    await send_and_hang_up(proxy.url, "/slow/0.5", "gone-1")
    await upstream.wait_finished("/slow/0.5")
    await asyncio.sleep(0.1)  # the answer is stored right after the upstream finishes
    status, headers, _ = await post(client, f"{proxy.url}/slow/0.5", "gone-1")
    assert status == 201
    assert headers.get("Idempotent-Replayed") == "true"
    assert upstream.executions["/slow/0.5"] == 1


async def test_lease_is_renewed_while_the_upstream_call_outlives_lock_timeout(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
) -> None:
    upstream, url = counting_upstream
    proxy = await sidecar(url, idempotency={"lock_timeout": "300ms"})
    first = asyncio.create_task(post(client, f"{proxy.url}/slow/0.9", "long-1"))
    statuses = []
    for _ in range(3):  # at 0.25 s, 0.5 s and 0.75 s: past one and two lease lengths
        await asyncio.sleep(0.25)
        statuses.append((await post(client, f"{proxy.url}/slow/0.9", "long-1"))[0])
    assert statuses == [409, 409, 409]
    assert (await first)[0] == 201
    assert upstream.executions["/slow/0.9"] == 1


async def test_closed_redis_port_with_reject_gives_503_and_never_calls_upstream(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
    free_port: Callable[[], int],
) -> None:
    upstream, url = counting_upstream
    store = f"redis://127.0.0.1:{free_port()}/0"
    proxy = await sidecar(url, idempotency={"store": store, "on_store_error": "reject"})
    status, headers, body = await post(client, f"{proxy.url}/charge", "down-1")
    assert status == 503
    assert headers["Content-Type"] == "application/problem+json"
    assert b"idempotency-store-unavailable" in body
    assert upstream.total == 0
    assert proxy.metric("idempotency_store_errors_total", action="reject") == 1
    async with client.post(f"{proxy.url}/charge", data=b"{}") as unkeyed:
        assert unkeyed.status == 201  # requests without a key never touch the store


async def test_closed_redis_port_with_pass_forwards_and_counts(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
    free_port: Callable[[], int],
) -> None:
    upstream, url = counting_upstream
    store = f"redis://127.0.0.1:{free_port()}/0"
    proxy = await sidecar(url, idempotency={"store": store, "on_store_error": "pass"})
    for _ in range(2):
        status, headers, _ = await post(client, f"{proxy.url}/charge", "down-2")
        assert status == 201 and "Idempotent-Replayed" not in headers
    assert upstream.executions["/charge"] == 2
    assert proxy.metric("idempotency_store_errors_total", action="pass") == 2


@pytest.mark.parametrize("on_store_error", ["reject", "pass"])
async def test_redis_restart_is_survived_without_restarting_the_sidecar(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
    redis_server: Callable[[], Awaitable[RedisServer]],
    on_store_error: str,
) -> None:
    upstream, url = counting_upstream
    server = await redis_server()
    store = with_prefix(server.url, "restart")
    proxy = await sidecar(url, idempotency={"store": store, "on_store_error": on_store_error})
    assert (await post(client, f"{proxy.url}/charge", "before"))[0] == 201

    server.stop()
    status, _, _ = await post(client, f"{proxy.url}/charge", "during")
    expected = {"reject": (503, 1), "pass": (201, 2)}[on_store_error]
    assert (status, upstream.executions["/charge"]) == expected
    assert proxy.metric("idempotency_store_errors_total", action=on_store_error) == 1

    await server.start()
    first = await post(client, f"{proxy.url}/charge", "after")
    replay = await post(client, f"{proxy.url}/charge", "after")
    assert first[0] == replay[0] == 201
    assert replay[1].get("Idempotent-Replayed") == "true"
    assert upstream.executions["/charge"] == expected[1] + 1


async def test_readiness_names_the_idempotency_store_while_redis_is_down(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    redis_server: Callable[[], Awaitable[RedisServer]],
) -> None:
    _, url = counting_upstream
    server = await redis_server()
    proxy = await sidecar(url, idempotency={"store": server.url})
    readiness = proxy.app[READINESS]
    assert await readiness.failing() == {}
    server.stop()
    assert "idempotency_store" in await readiness.failing()
    await server.start()
    assert await readiness.failing() == {}


async def test_store_error_while_storing_still_answers_the_client(
    sidecar: SidecarFactory,
    counting_upstream: tuple[CountingUpstream, str],
    client: aiohttp.ClientSession,
    redis_server: Callable[[], Awaitable[RedisServer]],
) -> None:
    upstream, url = counting_upstream
    server = await redis_server()
    proxy = await sidecar(url, idempotency={"store": server.url})
    call = asyncio.create_task(post(client, f"{proxy.url}/slow/0.5", "mid-1"))
    await asyncio.sleep(0.2)
    server.stop()
    status, _, body = await call
    assert status == 201 and b"slept" in body
    assert proxy.metric("idempotency_store_errors_total", action="complete") == 1
    assert upstream.executions["/slow/0.5"] == 1
