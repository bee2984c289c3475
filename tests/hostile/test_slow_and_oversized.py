"""Slow-loris and oversized requests where foundation's listener tests do not reach: saga trigger
bodies (read whole by the trigger route itself) and the admin listener.

The module's sidecar has ``limits.read_timeout: 1s`` and a 64 KiB trigger body limit; the public
listener's own head and forwarded-body limits are covered by tests/foundation/test_limits.py and
test_upstream_failures.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from conftest import Sidecar
from foundation.rawhttp import Connection
from saga_store.helpers import Target

from hostile.conftest import READ_TIMEOUT

TRIGGER = b"POST /hostile/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


async def open_to(url: str) -> Connection:
    return await Connection.open(url)


@pytest.mark.parametrize("key", [b"", b"Idempotency-Key: slow-body-1\r\n"], ids=["no-key", "key"])
async def test_trigger_body_stalling_past_read_timeout_gets_408_and_starts_nothing(
    saga_sidecar: Sidecar, pg: Target, key: bytes
) -> None:
    before = await pg.count("saga_instances")
    connection = await open_to(saga_sidecar.url)
    try:
        started = time.monotonic()
        await connection.send(TRIGGER + key + b'Content-Length: 20\r\n\r\n{"x": ')
        response = await connection.response()
        elapsed = time.monotonic() - started
        assert response.status == 408
        assert response.problem()
        assert READ_TIMEOUT * 0.9 < elapsed < READ_TIMEOUT + 2
        assert response.headers["connection"] == "close"
    finally:
        await connection.close()
    assert await pg.count("saga_instances") == before


async def test_trigger_body_trickling_within_read_timeout_is_accepted(
    saga_sidecar: Sidecar,
) -> None:
    connection = await open_to(saga_sidecar.url)
    body = b'{"trickle": true}'
    try:
        await connection.send(TRIGGER + f"Content-Length: {len(body)}\r\n\r\n".encode())
        for start in range(0, len(body), 6):
            await asyncio.sleep(READ_TIMEOUT / 3)
            await connection.send(body[start : start + 6])
        response = await connection.response()
    finally:
        await connection.close()
    assert response.status == 200, response.body


async def test_declared_trigger_body_over_the_limit_is_refused_before_it_is_sent(
    saga_sidecar: Sidecar,
) -> None:
    connection = await open_to(saga_sidecar.url)
    try:
        await connection.send(TRIGGER + b"Content-Length: 10000000\r\n\r\n")
        response = await connection.response()
    finally:
        await connection.close()
    assert response.status == 413
    assert response.problem()


async def test_admin_request_line_over_the_limit_is_a_431_problem(saga_sidecar: Sidecar) -> None:
    connection = await open_to(saga_sidecar.admin_url)
    try:
        await connection.send(b"GET /sagas?name=" + b"x" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        response = await connection.response()
    finally:
        await connection.close()
    assert response.status == 431
    assert "xxxx" not in response.problem()["detail"]


async def test_admin_head_trickling_past_read_timeout_gets_408(saga_sidecar: Sidecar) -> None:
    connection = await open_to(saga_sidecar.admin_url)
    try:
        started = time.monotonic()
        await connection.send(b"GET /healthz HTTP/1.1\r\n")
        # Still trickling when the deadline passes; on a loaded machine the sleeps may overrun
        # it, and the peer has then already answered and closed: that is the expected outcome.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(2):
                await asyncio.sleep(READ_TIMEOUT / 3)
                await connection.send(b"X-Slow: 1\r\n")
        response = await connection.response()
        assert response.status == 408
        assert READ_TIMEOUT * 0.9 < time.monotonic() - started < READ_TIMEOUT + 2
        assert await connection.closed_by_peer()
    finally:
        await connection.close()
