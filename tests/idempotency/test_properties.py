"""Property: whatever header values and keys a client sends, the sidecar never answers 5xx."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idempotency.conftest import InProcessSidecar, SidecarFactory
from idempotency.upstream import CountingUpstream
from proxy.errors import InvalidKey
from proxy.idempotency.keys import parse_key, parse_prefer_wait

# Anything aiohttp's client lets through as a header value: no control characters but tab.
header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.just("\t"),
    max_size=300,
)
# Raw header value bytes a hand-written client could send: anything but CR, LF and NUL.
header_bytes = st.binary(max_size=300).map(
    lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
)
key_like = st.one_of(
    header_text,
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=260),
    st.builds(lambda inner: f'"{inner}"', header_text),
)


@pytest.fixture
async def proxy(
    sidecar: SidecarFactory, counting_upstream: tuple[CountingUpstream, str]
) -> InProcessSidecar:
    """One sidecar for every example of a property test."""
    _, url = counting_upstream
    return await sidecar(url, idempotency={"concurrent": "wait", "lock_timeout": "2s"})


@given(values=st.lists(header_text, max_size=3))
def test_parse_key_either_returns_a_valid_key_or_raises_invalid_key(values: list[str]) -> None:
    try:
        key = parse_key(values)
    except InvalidKey:
        return
    if key is not None:
        assert 1 <= len(key) <= 255 and all("!" <= char <= "~" for char in key)


@given(values=st.lists(header_text, max_size=3))
def test_parse_prefer_wait_never_raises(values: list[str]) -> None:
    seconds = parse_prefer_wait(values)
    assert seconds is None or 0 <= seconds <= 300


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    keys=st.lists(key_like, max_size=3),
    authorization=st.none() | header_text,
    prefer=st.none() | header_text,
    body=st.binary(max_size=64),
)
async def test_arbitrary_keys_and_header_values_never_produce_a_5xx(
    proxy: InProcessSidecar,
    keys: list[str],
    authorization: str | None,
    prefer: str | None,
    body: bytes,
) -> None:
    headers = [("Idempotency-Key", key) for key in keys]
    if authorization is not None:
        headers.append(("Authorization", authorization))
    if prefer is not None:
        headers.append(("Prefer", prefer))
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"{proxy.url}/charge", data=body, headers=headers) as response,
    ):
        assert response.status < 500, (response.status, await response.text())


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=header_bytes, authorization=header_bytes, repeat=st.booleans())
async def test_arbitrary_raw_header_bytes_never_produce_a_5xx(
    proxy: InProcessSidecar, key: bytes, authorization: bytes, repeat: bool
) -> None:
    lines = [b"Idempotency-Key: " + key] * (2 if repeat else 1)
    lines.append(b"Authorization: " + authorization)
    status = await raw_post(proxy.url, lines)
    assert status < 500 or status == 0


async def raw_post(url: str, header_lines: list[bytes]) -> int:
    """POST with the given raw header lines; the status code (0 if the server hung up)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = b"POST /charge HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n"
        writer.write(head + b"".join(line + b"\r\n" for line in header_lines) + b"\r\n{}")
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    parts = status_line.split()
    return int(parts[1]) if len(parts) > 1 else 0
