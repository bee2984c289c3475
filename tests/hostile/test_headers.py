"""Hostile header values on the public listener: 8 KB values, keys that are not keys, secrets in
requests the sidecar refuses; refused with 4xx, never forwarded, never logged or echoed."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from conftest import Sidecar
from foundation.rawhttp import Connection, RawResponse

from hostile.services import Recorder

SECRET = "s3cr3t-canary-0d5e"


async def raw_exchange(sidecar: Sidecar, request: bytes) -> RawResponse:
    """Send raw request bytes and read the answer."""
    connection = await Connection.open(sidecar.url)
    try:
        await connection.send(request)
        return await connection.response()
    finally:
        await connection.close()


@pytest.mark.parametrize(
    "header",
    [
        b"Authorization: Bearer " + SECRET.encode() + b"\x01\x02",
        b"Cookie: session=" + SECRET.encode() + b"\x7f",
        b"Authorization: Bearer " + SECRET.encode() + b"x" * 20000,
        b"X-Api-Key: " + SECRET.encode() + b"\r\nbad header line",
        b"Idempotency-Key: " + SECRET.encode() + b"\xff",
        b"Idempotency-Key: " + SECRET.encode() + b"\r\nIdempotency-Key: other",
    ],
    ids=["control-chars", "del-in-cookie", "oversized", "broken-line", "key-not-ascii", "two-keys"],
)
async def test_a_refused_request_never_logs_or_echoes_its_secrets(
    saga_sidecar: Sidecar, recorder: tuple[Recorder, str], header: bytes
) -> None:
    path = f"/charge/{uuid.uuid4().hex}"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + header
        + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )  # fmt: skip
    logged_before = len(saga_sidecar.log_text())
    response = await raw_exchange(saga_sidecar, request)
    assert 400 <= response.status < 500
    assert response.headers["content-type"] == "application/problem+json"
    assert SECRET not in response.body.decode("latin-1")
    assert recorder[0].calls_to(path) == []
    await asyncio.sleep(0.1)  # the access log line follows the answer
    logged = saga_sidecar.log_text()[logged_before:]
    assert logged.strip(), "the refusal was not logged"
    assert SECRET not in logged


async def test_an_8k_idempotency_key_is_refused_without_calling_the_app(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar, recorder: tuple[Recorder, str]
) -> None:
    path = f"/charge/{uuid.uuid4().hex}"
    headers = {"Idempotency-Key": "k" * 8192}
    async with http.post(f"{saga_sidecar.url}{path}", json={}, headers=headers) as response:
        assert response.status == 400
        assert "k" * 300 not in await response.text()
    assert recorder[0].calls_to(path) == []


async def test_8k_credentials_scope_keys_per_tenant_and_replays_stay_within_one(
    http: aiohttp.ClientSession, saga_sidecar: Sidecar, recorder: tuple[Recorder, str]
) -> None:
    path = f"/charge/{uuid.uuid4().hex}"
    tenants = [f"Bearer {'a' * 8192}", f"Bearer {'a' * 8191}b"]
    replayed = []
    for authorization in [*tenants, *tenants]:
        headers = {"Idempotency-Key": "same-key", "Authorization": authorization}
        async with http.post(f"{saga_sidecar.url}{path}", json={}, headers=headers) as response:
            assert response.status == 200
            replayed.append(response.headers.get("Idempotent-Replayed"))
    assert replayed == [None, None, "true", "true"]
    assert len(recorder[0].calls_to(path)) == 2
