"""Slow clients must not starve the upstream pool: 1,000 of them (drip uploaders and readers that
take nothing) next to normal traffic through a real sidecar; the normal traffic's p99 stays low.

The slow clients come from 127.0.0.2 and the normal traffic from 127.0.0.1, two client addresses:
``upstream.max_connections_per_client`` keeps the first from holding every connection to the app,
``limits.write_timeout`` drops a reader that takes nothing, and ``upstream.pool_timeout`` answers
503 instead of letting a request wait without end for a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator

import aiohttp
import pytest
from aiohttp import web
from conftest import Sidecar, Upstream

SLOW_ADDRESS = "127.0.0.2"
DRIPPERS = 900
READERS = 100
BIG = b"b" * (6 * 1024 * 1024)  # more than the kernel buffers on both sides hold
NORMAL_WORKERS = 4
NORMAL_SECONDS = 6.0
CLIENT_WAIT = 10.0  # a normal request still unanswered after this counts as this slow
P99_BOUND = 1.0


def slow_app() -> web.Application:
    """``/ping`` answers at once, ``/big`` sends 6 MiB, ``/upload`` reads its body first."""

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    async def upload(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="stored")

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_get("/ping", ping)
    app.router.add_get("/big", big)
    app.router.add_post("/upload", upload)
    return app


@pytest.fixture
def app_url(app_in_thread: Callable[..., Upstream]) -> Iterator[str]:
    upstream = app_in_thread(slow_app())
    yield upstream.url
    upstream.stop()


def sidecar_config(app_url: str) -> dict[str, object]:
    return {
        "upstream": {
            "url": app_url,
            "max_connections": 800,
            "timeout": "30s",
            "max_connections_per_client": 200,
            "pool_timeout": "2s",
        },
        "limits": {"write_timeout": "2s"},
    }


async def drip(host: str, port: int, stop: asyncio.Event) -> None:
    """Upload a 1 MiB body one byte every half second."""
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection(host, port, local_addr=(SLOW_ADDRESS, 0))
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 1048576\r\n\r\n" + b"x" * 1024
        )
        try:
            while not stop.is_set():
                await asyncio.sleep(0.5)
                writer.write(b"x")
                await writer.drain()
        finally:
            writer.transport.abort()


async def stalled_reader(host: str, port: int, stop: asyncio.Event) -> None:
    """Ask for 6 MiB with a tiny receive buffer, then read none of it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((SLOW_ADDRESS, 0))
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: app\r\n\r\n")
            await stop.wait()
    finally:
        sock.close()


async def normal_traffic(url: str) -> tuple[list[float], Counter[int]]:
    """GET /ping from 127.0.0.1 in a few loops; the latencies and statuses."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    until = time.monotonic() + NORMAL_SECONDS
    connector = aiohttp.TCPConnector(limit=NORMAL_WORKERS, local_addr=("127.0.0.1", 0))
    timeout = aiohttp.ClientTimeout(total=CLIENT_WAIT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def worker() -> None:
            while time.monotonic() < until:
                started = time.monotonic()
                try:
                    async with http.get(f"{url}/ping") as response:
                        await response.read()
                        statuses[response.status] += 1
                except (aiohttp.ClientError, TimeoutError):
                    statuses[0] += 1
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.02)

        await asyncio.gather(*(worker() for _ in range(NORMAL_WORKERS)))
    return latencies, statuses


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_slow_clients_do_not_starve_normal_traffic(
    sidecar_process: Callable[..., Sidecar], app_url: str
) -> None:
    sidecar = sidecar_process(sidecar_config(app_url))
    host, port = sidecar.url.removeprefix("http://").rsplit(":", 1)
    stop = asyncio.Event()
    slow = [asyncio.create_task(drip(host, int(port), stop)) for _ in range(DRIPPERS)]
    slow += [asyncio.create_task(stalled_reader(host, int(port), stop)) for _ in range(READERS)]
    try:
        await asyncio.sleep(3.0)  # every slow client connected and holding what it can
        latencies, statuses = await normal_traffic(sidecar.url)
    finally:
        stop.set()
        await asyncio.gather(*slow, return_exceptions=True)
    worst = p99(latencies)
    print(f"normal traffic: {len(latencies)} requests, p99 {worst * 1000:.0f} ms, {statuses}")
    assert statuses == Counter({200: len(latencies)}), statuses
    assert worst < P99_BOUND, f"p99 {worst:.2f}s"
    assert sidecar.process.poll() is None


async def test_a_client_taking_nothing_is_dropped_and_frees_its_connection(
    sidecar_process: Callable[..., Sidecar], app_url: str
) -> None:
    sidecar = sidecar_process(
        {
            "upstream": {"url": app_url, "max_connections": 1, "pool_timeout": "5s"},
            "limits": {"write_timeout": "1s"},
        }
    )
    host, port = sidecar.url.removeprefix("http://").rsplit(":", 1)
    stop = asyncio.Event()
    reader = asyncio.create_task(stalled_reader(host, int(port), stop))
    try:
        await asyncio.sleep(0.5)  # the reader holds the only connection to the app
        started = time.monotonic()
        async with aiohttp.ClientSession() as http, http.get(f"{sidecar.url}/ping") as response:
            assert (response.status, await response.text()) == (200, "pong")
        assert time.monotonic() - started < 3.0
    finally:
        stop.set()
        await reader
    assert "took none of the answer" in sidecar.log_text()
