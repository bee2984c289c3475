"""``limits`` on the public listener, driven over raw sockets: 431, 408, 400 as problem+json.

The sidecar runs with ``max_header_size: 1KiB`` and ``read_timeout: 500ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from foundation.rawhttp import Connection

if TYPE_CHECKING:
    from conftest import Sidecar, Upstream

READ_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def sidecar(module_sidecar_process: Callable[..., Sidecar], upstream: Upstream) -> Sidecar:
    """A sidecar with small head limits and a short read timeout."""
    return module_sidecar_process(
        {
            "upstream": {"url": upstream.url},
            "limits": {"max_header_size": "1KiB", "read_timeout": f"{READ_TIMEOUT * 1000:g}ms"},
        }
    )


@pytest.fixture
async def connect(sidecar: Sidecar) -> Any:
    """``await connect()`` opens a raw connection, closed after the test."""
    opened: list[Connection] = []

    async def open_one() -> Connection:
        connection = await Connection.open(sidecar.url)
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        await connection.close()


def get(path: str = "/echo/raw", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: sidecar\r\n{extra}\r\n".encode()


async def test_header_field_over_max_header_size_is_a_431_problem(connect: Any) -> None:
    connection = await connect()
    await connection.send(get(extra=f"X-Big: {'a' * 2000}\r\n"))
    response = await connection.response()
    assert response.status == 431
    assert "1024" in response.problem()["detail"]
    assert "aaaa" not in response.body.decode()
    assert await connection.closed_by_peer()


async def test_too_many_header_fields_is_a_431_problem(connect: Any) -> None:
    connection = await connect()
    await connection.send(get(extra="".join(f"X-H{i}: v\r\n" for i in range(200))))
    response = await connection.response()
    assert response.status == 431
    response.problem()


async def test_request_line_over_max_header_size_is_a_431_problem(connect: Any) -> None:
    connection = await connect()
    await connection.send(get(path="/echo/" + "p" * 2000))
    response = await connection.response()
    assert response.status == 431
    response.problem()


async def test_header_just_under_the_limit_is_forwarded(connect: Any) -> None:
    connection = await connect()
    await connection.send(get(extra=f"X-Big: {'a' * 900}\r\n"))
    response = await connection.response()
    assert response.status == 200
    assert json.loads(response.body)["raw_path"] == "/echo/raw"


async def test_malformed_request_is_a_400_problem_not_a_traceback(connect: Any) -> None:
    connection = await connect()
    await connection.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    response = await connection.response()
    assert response.status == 400
    assert "Traceback" not in response.problem()["detail"]


async def test_head_trickling_past_read_timeout_gets_408_and_is_closed(connect: Any) -> None:
    connection = await connect()
    started = time.monotonic()
    await connection.send(b"GET /echo/slow-loris HTTP/1.1\r\nHost: x\r\n")
    # On a loaded machine the sleeps may overrun the deadline; the peer has then already
    # answered and closed, which is the expected outcome.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for _ in range(2):
            await asyncio.sleep(READ_TIMEOUT / 3)
            await connection.send(b"X-Drip: 1\r\n")
    response = await connection.response()
    assert response.status == 408
    assert f"{READ_TIMEOUT:g}s" in response.problem()["detail"]
    assert READ_TIMEOUT * 0.9 <= time.monotonic() - started < READ_TIMEOUT + 1
    assert await connection.closed_by_peer()


async def test_connection_that_never_sends_a_head_gets_408(connect: Any) -> None:
    connection = await connect()
    response = await connection.response()
    assert response.status == 408
    assert await connection.closed_by_peer()


async def test_slow_but_timely_head_is_answered(connect: Any) -> None:
    connection = await connect()
    for part in (b"GET /echo/drip HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
        await connection.send(part)
        await asyncio.sleep(READ_TIMEOUT / 5)
    assert (await connection.response()).status == 200


async def test_idle_keep_alive_connection_is_not_cut_by_read_timeout(connect: Any) -> None:
    connection = await connect()
    await connection.send(get())
    assert (await connection.response()).status == 200
    await asyncio.sleep(READ_TIMEOUT * 2)
    await connection.send(get())
    assert (await connection.response()).status == 200


async def test_each_request_on_a_connection_gets_a_fresh_head_deadline(connect: Any) -> None:
    connection = await connect()
    for _ in range(3):
        await asyncio.sleep(READ_TIMEOUT * 0.7)
        await connection.send(get())
        assert (await connection.response()).status == 200


async def test_request_body_stalling_past_read_timeout_gets_408(connect: Any) -> None:
    connection = await connect()
    await connection.send(
        b"POST /echo/slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    )
    response = await connection.response()
    assert response.status == 408
    assert "request body" in response.problem()["detail"]


async def test_request_body_arriving_in_time_is_forwarded(connect: Any) -> None:
    connection = await connect()
    await connection.send(b"POST /echo/body HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n")
    for _ in range(4):
        await asyncio.sleep(READ_TIMEOUT / 3)
        await connection.send(b"x" * 5)
    response = await connection.response()
    assert response.status == 200
    assert json.loads(response.body)["body_length"] == 20


async def test_an_http_0_9_request_line_is_refused(connect: Any) -> None:
    connection = await connect()
    await connection.send(b"GET /echo/raw\r\n\r\n")
    response = await connection.response()
    assert response.status == 400
    assert "version" in response.problem()["detail"]
    assert await connection.closed_by_peer()
