"""Failures the sidecar turns into problem+json answers, and failures it must not hide.

502 for an unreachable or resetting upstream, 504 when it is too slow, 413 for bodies over
``limits.max_request_body``; a body cut short after the headers went out reaches the client as
an incomplete body, never as a complete-looking short one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from foundation.upstreams import pattern_body

if TYPE_CHECKING:
    from conftest import AppThread, Sidecar, Upstream

BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def sidecar(module_sidecar_process: Callable[..., Sidecar], upstream: Upstream) -> Sidecar:
    """A sidecar with a 300 ms upstream timeout and a 64 KiB request body limit."""
    return module_sidecar_process(
        {
            "upstream": {"url": upstream.url, "timeout": "300ms"},
            "limits": {"max_request_body": BODY_LIMIT},
        }
    )


@pytest.fixture(scope="module")
def orphan_sidecar(
    module_sidecar_process: Callable[..., Sidecar], free_port: Callable[[], int]
) -> Sidecar:
    """A sidecar whose upstream port has nothing listening on it."""
    return module_sidecar_process({"upstream": {"url": f"http://127.0.0.1:{free_port()}"}})


async def assert_problem(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status``; return its members."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    problem: dict[str, Any] = await response.json(content_type=None)
    assert problem["status"] == status
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert "Traceback" not in await response.text()
    return problem


async def test_unreachable_upstream_is_a_502_problem(
    client: aiohttp.ClientSession, orphan_sidecar: Sidecar
) -> None:
    async with client.get(f"{orphan_sidecar.url}/anything") as response:
        problem = await assert_problem(response, 502)
    assert "unreachable" in problem["detail"]


async def test_upstream_reset_is_a_502_problem(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.get(f"{sidecar.url}/reset") as response:
        await assert_problem(response, 502)


async def test_upstream_closing_without_an_answer_is_a_502_problem(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.get(f"{sidecar.url}/close") as response:
        await assert_problem(response, 502)


class DroppingUpstream:
    """A raw upstream that answers every request, except that it drops the connection without
    a word when a request for ``/drop`` arrives on a connection that already served one: a
    keep-alive connection the app closed at the moment the proxy reused it."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0]
                self.heads.append(request_line)
                if served and b" /drop " in request_line:
                    return
                await self.skip_body(reader, head)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def skip_body(reader: asyncio.StreamReader, head: bytes) -> None:
        for line in head.lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture(scope="module")
def dropping_upstream(background_loop: AppThread) -> Iterator[tuple[DroppingUpstream, str]]:
    """The dropping upstream, served from the background loop for the whole module."""
    upstream = DroppingUpstream()
    url = background_loop.run(upstream.start())
    yield upstream, url
    background_loop.run(upstream.close())


@pytest.fixture(scope="module")
def dropping_sidecar(
    module_sidecar_process: Callable[..., Sidecar],
    dropping_upstream: tuple[DroppingUpstream, str],
) -> Sidecar:
    """A sidecar in front of the dropping upstream."""
    return module_sidecar_process({"upstream": {"url": dropping_upstream[1]}})


@pytest.fixture
def dropping(
    dropping_upstream: tuple[DroppingUpstream, str], dropping_sidecar: Sidecar
) -> tuple[DroppingUpstream, Sidecar]:
    """The dropping upstream, its record cleared, and the sidecar in front of it."""
    upstream = dropping_upstream[0]
    upstream.heads.clear()
    return upstream, dropping_sidecar


async def test_safe_request_on_a_keep_alive_connection_dropped_by_the_app_is_retried(
    client: aiohttp.ClientSession, dropping: tuple[DroppingUpstream, Sidecar]
) -> None:
    upstream, sidecar = dropping
    for path in ("/warm", "/drop"):
        async with client.get(f"{sidecar.url}{path}") as response:
            assert (response.status, await response.text()) == (200, "ok")
    assert upstream.heads == [
        b"GET /warm HTTP/1.1",
        b"GET /drop HTTP/1.1",
        b"GET /drop HTTP/1.1",
    ]


@pytest.mark.parametrize(
    ("method", "body"), [("POST", b"{}"), ("PATCH", b"{}"), ("PUT", None), ("DELETE", None)]
)
async def test_unsafe_request_on_a_dropped_connection_is_not_retried(
    client: aiohttp.ClientSession,
    dropping: tuple[DroppingUpstream, Sidecar],
    method: str,
    body: bytes | None,
) -> None:
    upstream, sidecar = dropping
    async with client.get(f"{sidecar.url}/warm") as response:
        assert response.status == 200
    async with client.request(method, f"{sidecar.url}/drop", data=body) as response:
        await assert_problem(response, 502)
    assert upstream.heads == [b"GET /warm HTTP/1.1", f"{method} /drop HTTP/1.1".encode()]


async def test_slow_upstream_is_a_504_problem_after_the_timeout(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    started = time.monotonic()
    async with client.get(f"{sidecar.url}/slow?delay=2") as response:
        problem = await assert_problem(response, 504)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.5
    assert "0.3" in problem["detail"]


async def test_long_stream_with_short_gaps_is_not_cut_by_the_timeout(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.get(f"{sidecar.url}/stall?gap=0.1&pieces=6") as response:
        assert response.status == 200
        body = await response.read()
    assert body == b"".join(f"piece {i}\n".encode() for i in range(6))


async def test_stream_stalling_past_the_timeout_ends_as_an_incomplete_body(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.get(f"{sidecar.url}/stall?gap=1&pieces=2") as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


@pytest.mark.parametrize("chunked", ["", "1"])
async def test_upstream_dying_mid_body_ends_as_an_incomplete_body(
    client: aiohttp.ClientSession, sidecar: Sidecar, chunked: str
) -> None:
    async with client.get(f"{sidecar.url}/cut?chunked={chunked}") as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_declared_content_length_over_the_limit_is_a_413_problem(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    size = BODY_LIMIT + 1
    headers = {"Content-Length": str(size)}
    async with client.post(
        f"{sidecar.url}/echo/big", data=pattern_body(size), headers=headers
    ) as response:
        problem = await assert_problem(response, 413)
    assert str(BODY_LIMIT) in problem["detail"]


async def test_chunked_body_growing_over_the_limit_is_a_413_problem(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.post(
        f"{sidecar.url}/echo/big", data=pattern_body(4 * BODY_LIMIT)
    ) as response:
        problem = await assert_problem(response, 413)
    assert str(BODY_LIMIT) in problem["detail"]


async def test_body_exactly_at_the_limit_is_forwarded(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.post(f"{sidecar.url}/echo/edge", data=pattern_body(BODY_LIMIT)) as r:
        assert r.status == 200
        report = await r.json()
    assert report["body_length"] == BODY_LIMIT


async def test_failures_are_counted_and_logged_with_their_status(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.get(f"{sidecar.url}/close", headers={"X-Request-Id": "fail-1"}) as r:
        assert r.status == 502
        assert r.headers["X-Request-Id"] == "fail-1"
    async with client.get(f"{sidecar.admin_url}/metrics") as r:
        metrics = await r.text()
    assert 'http_requests_total{method="GET",status="502"}' in metrics
    records = [rec for rec in sidecar.log_records() if rec.get("request_id") == "fail-1"]
    assert [rec["status"] for rec in records if rec["logger"] == "saga_sidecar.access"] == [502]
