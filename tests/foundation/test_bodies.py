"""Bodies stream through the sidecar both ways, byte-exact, without growing its memory.

The upstream hashes what it receives while it streams in; downloads are hashed by the client as
they stream out. The sidecar's peak resident memory (``VmHWM``) must barely move while 50 MB go
through it in each direction.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from yarl import URL

from foundation.upstreams import pattern_body, pattern_chunks, pattern_sha256

if TYPE_CHECKING:
    from conftest import Sidecar, Upstream

BIG = 50 * 1024 * 1024
MAX_GROWTH = 15 * 1024 * 1024


@pytest.fixture(scope="module")
def sidecar(module_sidecar_process: Callable[..., Sidecar], upstream: Upstream) -> Sidecar:
    """One sidecar for the module, with room for 50 MB request bodies."""
    return module_sidecar_process(
        {"upstream": {"url": upstream.url}, "limits": {"max_request_body": "64MiB"}}
    )


async def upload(client: aiohttp.ClientSession, sidecar: Sidecar, **kwargs: Any) -> dict[str, Any]:
    """POST to the echo upstream through the sidecar; return what the upstream received."""
    async with client.post(f"{sidecar.url}/echo/upload", **kwargs) as response:
        assert response.status == 200, await response.text()
        report: dict[str, Any] = await response.json()
        return report


async def download_sha256(client: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    """Stream ``url``; return (bytes received, their SHA-256, the upstream's announced SHA-256)."""
    digest = hashlib.sha256()
    received = 0
    async with client.get(url) as response:
        assert response.status == 200
        async for chunk in response.content.iter_any():
            digest.update(chunk)
            received += len(chunk)
        return received, digest.hexdigest(), response.headers["X-Body-Sha256"]


@pytest.mark.parametrize("size", [0, 1, 65_537])
async def test_small_request_bodies_arrive_intact(
    client: aiohttp.ClientSession, sidecar: Sidecar, size: int
) -> None:
    body = b"".join(pattern_chunks(size))
    report = await upload(client, sidecar, data=body)
    assert (report["body_length"], report["body_sha256"]) == (
        size,
        hashlib.sha256(body).hexdigest(),
    )


@pytest.mark.parametrize("size", [0, 1, 65_537])
@pytest.mark.parametrize("chunked", ["", "1"])
async def test_small_response_bodies_arrive_intact(
    client: aiohttp.ClientSession, sidecar: Sidecar, size: int, chunked: str
) -> None:
    url = f"{sidecar.url}/download?size={size}&chunked={chunked}"
    received, digest, announced = await download_sha256(client, url)
    assert (received, digest) == (size, announced)


@pytest.mark.parametrize("chunked", ["", "1"])
async def test_http_1_0_client_gets_a_streamed_body_without_chunked_framing(
    sidecar: Sidecar, chunked: str
) -> None:
    url = URL(sidecar.url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(f"GET /download?size=100000&chunked={chunked} HTTP/1.0\r\n\r\n".encode())
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    assert b"transfer-encoding" not in head.lower()
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(100_000)


async def test_chunked_upload_arrives_intact_and_chunked(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    size = 3 * 1024 * 1024 + 17
    report = await upload(client, sidecar, data=pattern_body(size))
    assert report["chunked"] is True
    assert (report["body_length"], report["body_sha256"]) == (size, pattern_sha256(size))


async def test_content_length_upload_keeps_its_content_length(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    size = 1024 * 1024
    report = await upload(
        client, sidecar, data=pattern_body(size), headers={"Content-Length": str(size)}
    )
    assert report["chunked"] is False
    assert [v for k, v in report["headers"] if k.lower() == "content-length"] == [str(size)]
    assert report["body_sha256"] == pattern_sha256(size)


async def test_compressed_request_body_is_forwarded_as_sent_not_decompressed(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    body = gzip.compress(b"".join(pattern_chunks(200_000)))
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    report = await upload(client, sidecar, data=body, headers=headers)
    assert (report["body_length"], report["body_sha256"]) == (
        len(body),
        hashlib.sha256(body).hexdigest(),
    )
    assert [v for k, v in report["headers"] if k.lower() == "content-encoding"] == ["gzip"]


async def test_compressed_response_body_is_relayed_as_sent(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    async with client.get(f"{sidecar.url}/gzipped") as response:
        assert response.headers["Content-Encoding"] == "gzip"
        raw = await response.read()
    assert gzip.decompress(raw) == b"".join(pattern_chunks(100_000))


async def test_50mb_upload_streams_without_growing_memory(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    await upload(client, sidecar, data=b"warm-up")
    before = sidecar.peak_rss_bytes()
    report = await upload(
        client, sidecar, data=pattern_body(BIG), headers={"Content-Length": str(BIG)}
    )
    growth = sidecar.peak_rss_bytes() - before
    assert (report["body_length"], report["body_sha256"]) == (BIG, pattern_sha256(BIG))
    assert growth < MAX_GROWTH, f"sidecar peak RSS grew by {growth / 2**20:.1f} MiB"


async def test_50mb_chunked_upload_streams_without_growing_memory(
    client: aiohttp.ClientSession, sidecar: Sidecar
) -> None:
    await upload(client, sidecar, data=b"warm-up")
    before = sidecar.peak_rss_bytes()
    report = await upload(client, sidecar, data=pattern_body(BIG))
    growth = sidecar.peak_rss_bytes() - before
    assert (report["body_length"], report["body_sha256"]) == (BIG, pattern_sha256(BIG))
    assert growth < MAX_GROWTH, f"sidecar peak RSS grew by {growth / 2**20:.1f} MiB"


@pytest.mark.parametrize("chunked", ["", "1"])
async def test_50mb_download_streams_without_growing_memory(
    client: aiohttp.ClientSession, sidecar: Sidecar, chunked: str
) -> None:
    await download_sha256(client, f"{sidecar.url}/download?size=1")
    before = sidecar.peak_rss_bytes()
    url = f"{sidecar.url}/download?size={BIG}&chunked={chunked}"
    received, digest, announced = await download_sha256(client, url)
    growth = sidecar.peak_rss_bytes() - before
    assert (received, digest) == (BIG, announced)
    assert growth < MAX_GROWTH, f"sidecar peak RSS grew by {growth / 2**20:.1f} MiB"
