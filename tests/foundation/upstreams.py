"""The real upstream app the foundation tests put behind the sidecar, plus body helpers.

``/echo/...``: reports what arrived (method, raw path, raw header lines, body length and
SHA-256) as JSON, hashing the body as it streams in. ``/download``: streams a deterministic body
of ``size`` bytes. Other routes misbehave on purpose: slow answers, hop-by-hop response headers,
resets, bodies cut short, stalls between chunks.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

BLOCK = bytes(range(256)) * 256  # 64 KiB
HOP_RESPONSE_HEADERS = {
    "Connection": "X-Hop-Resp",
    "X-Hop-Resp": "must not reach the client",
    "Keep-Alive": "timeout=5",
    "Proxy-Authenticate": 'Basic realm="upstream"',
    "Trailer": "X-Checksum",
    "Upgrade": "h2c",
    "TE": "trailers",
    "X-Kept": "yes",
}


def pattern_chunks(size: int, chunk: int = len(BLOCK)) -> Iterator[bytes]:
    """``size`` bytes of the repeating 0..255 pattern, in pieces of at most ``chunk`` bytes."""
    remaining = size
    while remaining > 0:
        piece = BLOCK[: min(chunk, remaining)]
        remaining -= len(piece)
        yield piece


def pattern_sha256(size: int) -> str:
    """SHA-256 of ``size`` pattern bytes, computed without holding them all."""
    digest = hashlib.sha256()
    for piece in pattern_chunks(size):
        digest.update(piece)
    return digest.hexdigest()


async def pattern_body(size: int) -> AsyncIterator[bytes]:
    """The pattern as an async generator: aiohttp sends it with chunked encoding."""
    for piece in pattern_chunks(size):
        yield piece


async def echo(request: web.Request) -> web.StreamResponse:
    """Describe the request as received, hashing the body chunk by chunk."""
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    report: dict[str, Any] = {
        "method": request.method,
        "raw_path": request.raw_path,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_length": length,
        "body_sha256": digest.hexdigest(),
        "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
    }
    headers = CIMultiDict({"X-Seen-Method": request.method, "X-Seen-Length": str(length)})
    if request.method == "HEAD":
        return web.Response(headers=headers)
    if "status" not in request.query:
        return web.json_response(report, headers=headers)
    headers.extend([("Location", "/elsewhere"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    response = web.json_response(report, headers=headers, status=int(request.query["status"]))
    response.set_status(response.status, "Custom Reason")
    return response


async def download(request: web.Request) -> web.StreamResponse:
    """Stream ``size`` pattern bytes; ``?chunked=1`` omits Content-Length."""
    size = int(request.query["size"])
    response = web.StreamResponse(headers={"X-Body-Sha256": pattern_sha256(size)})
    if request.query.get("chunked"):
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)
    for piece in pattern_chunks(size):
        await response.write(piece)
    await response.write_eof()
    return response


async def gzipped(request: web.Request) -> web.Response:
    """100,000 pattern bytes, gzip-compressed, labelled ``Content-Encoding: gzip``."""
    body = gzip.compress(b"".join(pattern_chunks(100_000)))
    return web.Response(body=body, headers={"Content-Encoding": "gzip"})


async def big_header(request: web.Request) -> web.Response:
    """A response with a ``?size=``-byte header value."""
    return web.Response(text="big", headers={"X-Big": "b" * int(request.query["size"])})


async def slow(request: web.Request) -> web.Response:
    """Answer after ``?delay=`` seconds."""
    await asyncio.sleep(float(request.query.get("delay", "1")))
    return web.Response(text="finally")


async def hop_headers(request: web.Request) -> web.Response:
    """A response carrying every kind of hop-by-hop header plus one end-to-end header."""
    return web.Response(text="hop", headers=HOP_RESPONSE_HEADERS)


async def reset(request: web.Request) -> web.Response:
    """Reset the connection (RST) instead of answering."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert request.transport is not None
    request.transport.abort()
    await asyncio.sleep(1)
    return web.Response(text="never sent")


async def close_without_answer(request: web.Request) -> web.Response:
    """Close the connection after reading the request, without a status line."""
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(1)
    return web.Response(text="never sent")


async def cut_short(request: web.Request) -> web.StreamResponse:
    """Promise a body (Content-Length or chunked), send part of it, then drop the connection."""
    response = web.StreamResponse()
    if request.query.get("chunked"):
        response.enable_chunked_encoding()
    else:
        response.content_length = 100_000
    await response.prepare(request)
    await response.write(b"x" * 10_000)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return response


async def stall(request: web.Request) -> web.StreamResponse:
    """Send part of a chunked body, then pause ``?gap=`` seconds before the rest."""
    gap = float(request.query.get("gap", "1"))
    pieces = int(request.query.get("pieces", "2"))
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for index in range(pieces):
        if index:
            await asyncio.sleep(gap)
        await response.write(f"piece {index}\n".encode())
    await response.write_eof()
    return response


def upstream_app() -> web.Application:
    """The app behind the sidecar in the foundation tests."""
    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/download", download)
    app.router.add_get("/slow", slow)
    app.router.add_get("/gzipped", gzipped)
    app.router.add_get("/big-header", big_header)
    app.router.add_get("/hop", hop_headers)
    app.router.add_get("/reset", reset)
    app.router.add_get("/close", close_without_answer)
    app.router.add_get("/cut", cut_short)
    app.router.add_get("/stall", stall)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app
