"""Fixtures of the foundation suite: the echo upstream in a thread and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aiohttp
import pytest

from foundation.rawserver import Handler, RawServer, StartServer
from foundation.upstreams import upstream_app

if TYPE_CHECKING:
    from conftest import Upstream


@pytest.fixture(scope="module")
def upstream(app_in_thread: Callable[..., Upstream]) -> Upstream:
    """The foundation upstream app, serving from a background thread for the whole module.

    It does not decompress request bodies, so it sees the bytes exactly as the sidecar sent them.
    """
    return app_in_thread(upstream_app(), auto_decompress=False)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session: no decompression, no cookies kept."""
    async with aiohttp.ClientSession(
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


@pytest.fixture
async def raw_server() -> AsyncIterator[StartServer]:
    """``await raw_server(handler)`` starts a ``RawServer``; closed after the test, which fails
    if a handler raised."""
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        server = RawServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()
    errors = [exc for server in servers for exc in server.errors]
    assert not errors, f"upstream handlers failed: {errors!r}"
