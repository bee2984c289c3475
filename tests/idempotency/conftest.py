"""Fixtures of the idempotency suite: stores on real Redis, a counting upstream, sidecars.

Fixtures:
    idem_prefix          a key prefix unique to the test; its Redis keys are deleted afterwards.
    redis_store_url      ``$REDIS_URL`` with that prefix.
    store                the contract-suite store, parametrized: ``memory`` and ``redis``.
    counting_upstream    a ``CountingUpstream`` served on 127.0.0.1 in the test's loop.
    sidecar              ``await sidecar(upstream_url, idempotency={...}, **config)``: the public
                         app of an in-process sidecar on a real port (``InProcessSidecar``).
    redis_server         ``await redis_server()``: a private ``redis-server`` subprocess on its
                         own port that the test may stop and start again.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from conftest import Upstream, deep_merge, find_free_port
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from idempotency.upstream import CountingUpstream
from proxy.app import build_apps
from proxy.config import LoadedConfig, SidecarConfig
from proxy.idempotency import IdempotencyStore, store_from_url
from proxy.idempotency.memory_store import MemoryStore
from proxy.keys import METRICS


def with_prefix(url: str, prefix: str) -> str:
    """``url`` with the ``prefix`` query parameter set."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{urlencode({'prefix': prefix})}"


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` in the Redis at ``url``."""
    client = Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def idem_prefix(redis_url: str) -> AsyncIterator[str]:
    """A unique key prefix; everything under it is deleted from Redis after the test."""
    prefix = f"test-idem-{uuid.uuid4().hex[:12]}"
    yield prefix
    await delete_prefix(redis_url, prefix)


@pytest.fixture
def redis_store_url(redis_url: str, idem_prefix: str) -> str:
    """The shared test Redis, under this test's prefix."""
    return with_prefix(redis_url, idem_prefix)


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_store_url: str
) -> AsyncIterator[IdempotencyStore]:
    """Each store implementation in turn (the contract suite runs against both)."""
    instance = MemoryStore() if request.param == "memory" else store_from_url(redis_store_url)
    yield instance
    await instance.close()


@pytest.fixture
async def counting_upstream(
    upstream_server: Callable[..., Awaitable[Upstream]],
) -> tuple[CountingUpstream, str]:
    """A ``CountingUpstream`` on a real port, and its base URL."""
    counter = CountingUpstream()
    served = await upstream_server(counter.app())
    return counter, served.url


@dataclass
class InProcessSidecar:
    """The public app of a sidecar built from a config dict, listening on 127.0.0.1."""

    app: web.Application
    url: str

    def metric(self, name: str, **labels: str) -> float:
        """Current value of a sample of this sidecar's metrics (0 when absent)."""
        value = self.app[METRICS].registry.get_sample_value(name, labels)
        return value or 0.0


SidecarFactory = Callable[..., Awaitable[InProcessSidecar]]


@pytest.fixture
def sidecar(
    upstream_server: Callable[..., Awaitable[Upstream]], redis_store_url: str, tmp_path: Path
) -> SidecarFactory:
    """``await sidecar(upstream_url, idempotency={...}, **config)``; Redis store by default."""

    async def start(
        upstream_url: str, idempotency: dict[str, Any] | None = None, **config: Any
    ) -> InProcessSidecar:
        base = {
            "upstream": {"url": upstream_url, "timeout": "5s"},
            "idempotency": {"store": redis_store_url},
        }
        merged = deep_merge(base, {"idempotency": idempotency or {}, **config})
        loaded = LoadedConfig(
            path=tmp_path / "sidecar.yaml", config=SidecarConfig.model_validate(merged)
        )
        public = build_apps(loaded).public
        served = await upstream_server(public)
        return InProcessSidecar(public, served.url)

    return start


class RedisServer:
    """A ``redis-server`` subprocess on a fixed port, without persistence."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def spawn(self) -> None:
        """Start the server process (not yet answering)."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        args = ["--port", str(self.port), "--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.process = subprocess.Popen(
            [binary, *args, "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def start(self) -> None:
        """Start the server and wait until it answers PING."""
        self.spawn()
        client = Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        await client.ping()
                        return
                    except (RedisConnectionError, OSError):
                        await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    def stop(self) -> None:
        """Terminate the server and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def redis_server() -> Iterator[Callable[[], Awaitable[RedisServer]]]:
    """``await redis_server()`` starts a private Redis on a free port; stopped after the test."""
    servers: list[RedisServer] = []

    async def start() -> RedisServer:
        server = RedisServer(find_free_port())
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        server.stop()
