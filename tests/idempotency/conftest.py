"""Fixtures of the idempotency suite: stores on real Redis, a counting upstream, sidecars.

Fixtures:
    idem_prefix          a key prefix unique to the test; its Redis keys are deleted afterwards.
    redis_store_url      ``$REDIS_URL`` with that prefix.
    store                the contract-suite store, parametrized: ``memory``, ``redis``, and
                         ``redis-cluster`` / ``redis-sentinel`` / ``redis-tls`` (``rediss://``)
                         on private servers this session starts.
    counting_upstream    a ``CountingUpstream`` served on 127.0.0.1 in the test's loop.
    sidecar              ``await sidecar(upstream_url, idempotency={...}, runner={...}, **config)``:
                         the public app of an in-process sidecar on a real port.
    redis_server         ``await redis_server()``: a private ``redis-server`` subprocess on its
                         own port that the test may stop and start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
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


@pytest.fixture(params=["memory", "redis", "redis-cluster", "redis-sentinel", "redis-tls"])
async def store(
    request: pytest.FixtureRequest, redis_store_url: str, idem_prefix: str
) -> AsyncIterator[IdempotencyStore]:
    """Each store implementation in turn: the contract suite runs against all of them."""
    if request.param == "memory":
        instance: IdempotencyStore = MemoryStore()
    elif request.param == "redis":
        instance = store_from_url(redis_store_url)
    else:
        topology: RedisTopology = request.getfixturevalue(request.param.replace("-", "_"))
        instance = store_from_url(with_prefix(topology.url, idem_prefix))
    yield instance
    await instance.close()


def _wait_until(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {within}s")


@dataclass
class RedisTopology:
    """Redis processes started for the session, and the store URL that reaches them."""

    url: str
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        """Terminate every process."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(10)


def _redis_process(workdir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen(
        [binary, *extra, *args, "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    for _ in range(100):
        port = find_free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port + 10000)) != 0:
                return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTopology]:
    """A one-node Redis Cluster owning every slot (cross-slot rules apply as on any cluster)."""
    workdir = tmp_path_factory.mktemp("redis-cluster")
    port = _cluster_port()
    process = _redis_process(
        workdir, port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"
    )
    topology = RedisTopology(f"redis+cluster://127.0.0.1:{port}", [process])
    client = redis.Redis(port=port, socket_timeout=1)
    try:
        _wait_until(lambda: bool(client.ping()), "redis cluster node")
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        _wait_until(lambda: b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"),
                    "cluster state ok")  # fmt: skip
        yield topology
    finally:
        client.close()
        topology.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTopology]:
    """A Redis master watched by one Sentinel; the store finds the master through Sentinel."""
    workdir = tmp_path_factory.mktemp("redis-sentinel")
    master_port, sentinel_port = find_free_port(), find_free_port()
    master = _redis_process(workdir, master_port)
    config = workdir / "sentinel.conf"
    config.write_text(f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n")
    sentinel = _redis_process(workdir, sentinel_port, str(config), "--sentinel")
    topology = RedisTopology(
        f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0", [sentinel, master]
    )
    client = redis.Redis(port=sentinel_port, socket_timeout=1)
    try:
        _wait_until(
            lambda: (
                client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
                is not None
            ),
            "redis sentinel",
        )
        yield topology
    finally:
        client.close()
        topology.stop()


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
        upstream_url: str,
        idempotency: dict[str, Any] | None = None,
        runner: dict[str, Any] | None = None,
        **config: Any,
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
        served = await upstream_server(public, **(runner or {}))
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


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTopology]:
    """A Redis serving TLS only, with a self-signed certificate for 127.0.0.1.

    The topology URL is ``rediss://`` with ``ssl_ca_certs`` naming that certificate.
    """
    workdir = tmp_path_factory.mktemp("redis-tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = find_free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    process = _redis_process(workdir, 0, *tls, "--tls-auth-clients", "no")
    topology = RedisTopology(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", [process])
    client = redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_timeout=1
    )
    try:
        _wait_until(lambda: bool(client.ping()), "redis with TLS")
        yield topology
    finally:
        client.close()
        topology.stop()
