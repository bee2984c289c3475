"""Fixtures of the fault-injection suite: real sidecar processes, and stores the tests may kill.

Redis and PostgreSQL that a test stops and starts again run privately on their own ports (the
shared servers are never touched); tests that only need a store that keeps working use the shared
ones with a unique key prefix or schema.

Fixtures:
    keyed            a ``KeyedApp`` served from the background thread, and its URL.
    redis_server     ``await redis_server()``: a ``RedisServer`` of its own (from idempotency).
    private_pg       the session's private ``PostgresServer`` (started; a test may stop it,
                     it is running again before the next test).
    http             a client session without cookies, with a generous connection pool.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from conftest import Upstream, find_free_port
from idempotency.conftest import redis_server  # noqa: F401  (the same private-Redis fixture)

from reliability.services import KeyedApp, PostgresServer

# ``make chaos`` sets SAGA_SIDECAR_CHAOS=N: load phases last N times longer.
CHAOS_FACTOR = max(1, int(os.environ.get("SAGA_SIDECAR_CHAOS", "1") or "1"))


def phase(seconds: float) -> float:
    """A load phase of ``seconds``, times the chaos factor."""
    return seconds * CHAOS_FACTOR


async def eventually(check: Callable[[], Any], what: str, within: float = 15.0) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s (last: {result!r})")
        await asyncio.sleep(0.05)


@pytest.fixture
def keyed(app_in_thread: Callable[..., Upstream]) -> Iterator[tuple[KeyedApp, str]]:
    """A fresh ``KeyedApp`` and its URL."""
    app = KeyedApp()
    upstream = app_in_thread(app.app())
    yield app, upstream.url
    upstream.stop()


@pytest.fixture(scope="session")
def private_pg_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL cluster for the session."""
    server = PostgresServer(find_free_port())
    server.init()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def private_pg(private_pg_server: PostgresServer) -> Iterator[PostgresServer]:
    """The private PostgreSQL, running; started again after a test that stopped it."""
    if not private_pg_server.running:
        private_pg_server.start()
    yield private_pg_server
    if not private_pg_server.running:
        private_pg_server.start()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that keeps no cookies and may open many connections."""
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session
