"""Saga step calls over the proxy's own HTTP/1.1 client: ``UpstreamStepTransport``.

It implements ``saga_runner.transport.StepTransport`` with one ``proxy.upstream.UpstreamClient``
per origin (scheme, host and port), made on first use and closed with the transport. A step
URL is complete (``build_url`` already joined the service's path prefix), so the clients have
no prefix and the URL's path and query are sent byte for byte.

What a service sees and what the caller gets back match ``AiohttpTransport``: the default
``Accept``, ``Accept-Encoding: gzip, deflate`` and ``User-Agent`` headers unless the step sets
them, Basic credentials from the URL's user info (a step's own ``Authorization`` wins), a
gzip or deflate body decoded (at most ``limit`` bytes of it), header names and values decoded
as UTF-8, and one deadline on the whole exchange, from connecting to the last body byte.
"""

from __future__ import annotations

import asyncio
import base64
import zlib
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from multidict import CIMultiDict

from proxy.errors import UpstreamError, UpstreamUnreachable
from proxy.upstream import UpstreamClient, UpstreamResponse
from proxy.upstream.client import DEFAULT_KEEPALIVE
from saga_runner.errors import SendFailure
from saga_runner.transport import RawAnswer

USER_AGENT = "saga-sidecar"
_DEFAULTS = (
    ("accept", b"Accept: */*\r\n"),
    ("accept-encoding", b"Accept-Encoding: gzip, deflate\r\n"),
)
_UNSUPPORTED_ENCODINGS = frozenset({"br", "zstd"})


class _Decompressor(Protocol):
    @property
    def unconsumed_tail(self) -> bytes: ...

    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


class _Origin:
    """The client of one origin and the ``Authorization`` line its URL's user info gives."""

    def __init__(self, parts: SplitResult, limit: int, keepalive: float) -> None:
        self.client = UpstreamClient(
            f"{parts.scheme}://{parts.netloc}",
            timeout=None,
            limit=limit,
            keepalive=keepalive,
            max_field_size=8190,  # aiohttp's limit: a longer header line is not an answer
        )
        self.authorization: bytes | None = None
        if parts.username is not None or parts.password is not None:
            login = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            token = base64.b64encode(login.encode("latin-1")).decode("ascii")
            self.authorization = f"Authorization: Basic {token}\r\n".encode("ascii")


class UpstreamStepTransport:
    """Step calls over pooled keep-alive connections, ``limit`` at most per origin."""

    def __init__(self, *, limit: int = 200, keepalive: float = DEFAULT_KEEPALIVE) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._origins: dict[tuple[str, str], _Origin] = {}
        self._user_agent = f"User-Agent: {USER_AGENT}\r\n".encode("ascii")

    async def exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        seconds: float,
        limit: int,
    ) -> RawAnswer:
        """See ``saga_runner.transport.StepTransport.exchange``."""
        parts = urlsplit(url)
        origin = self._origin(parts)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = self._header_lines(headers, origin.authorization)
        try:
            async with asyncio.timeout(seconds):
                response = await origin.client.send(method, target.encode("utf-8"), lines, body)
                try:
                    raw = await _read(response, limit)
                finally:
                    response.release()
        except UpstreamUnreachable as exc:
            raise SendFailure(str(exc.__cause__ or exc), sent=False) from exc
        except TimeoutError:
            raise
        except (UpstreamError, OSError, zlib.error) as exc:
            raise SendFailure(repr(exc), sent=True) from exc
        return RawAnswer(response.status, _utf8_headers(response.headers), raw)

    async def close(self) -> None:
        """Close every origin's idle connections (busy ones close when released)."""
        origins, self._origins = self._origins, {}
        for origin in origins.values():
            await origin.client.close()

    def _origin(self, parts: SplitResult) -> _Origin:
        key = (parts.scheme, parts.netloc)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(parts, self._limit, self._keepalive)
        return origin

    def _header_lines(self, headers: Mapping[str, str], authorization: bytes | None) -> bytes:
        names = {name.lower() for name in headers}
        lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
        head = "".join(lines).encode("utf-8")
        extra = [line for name, line in _DEFAULTS if name not in names]
        if "user-agent" not in names:
            extra.append(self._user_agent)
        if authorization is not None and "authorization" not in names:
            extra.append(authorization)
        return b"".join(extra) + head


async def _read(response: UpstreamResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body, decoded of its gzip or deflate content coding."""
    encodings = response.headers.getall("Content-Encoding", None)
    encoding = encodings[-1].lower() if encodings and encodings[-1].isascii() else ""
    if encoding in _UNSUPPORTED_ENCODINGS:
        raise UpstreamError(f"Can not decode content-encoding: {encoding}", sent=True)
    if encoding not in ("gzip", "deflate"):
        return await _read_raw(response, limit)
    buffer = bytearray()
    decoder: _Decompressor | None = None
    while chunk := await response.read_chunk():
        if decoder is None:
            decoder = zlib.decompressobj(_window_bits(encoding, chunk))
        buffer += decoder.decompress(chunk, limit - len(buffer))
        if len(buffer) >= limit or decoder.unconsumed_tail:
            break  # the limit is reached; the rest is not read
    else:
        if encoding == "deflate" and decoder is not None and not decoder.eof:
            raise zlib.error("deflate stream ended early")
    return bytes(buffer)


async def _read_raw(response: UpstreamResponse, limit: int) -> bytes:
    buffer = bytearray()
    while chunk := await response.read_chunk():
        buffer += chunk
        if len(buffer) >= limit:
            break
    return bytes(buffer[:limit])


def _window_bits(encoding: str, first: bytes) -> int:
    """gzip framing; deflate in a zlib wrapper, or raw when the first byte is not one."""
    if encoding == "gzip":
        return 16 + zlib.MAX_WBITS
    return zlib.MAX_WBITS if first[0] & 0xF == 8 else -zlib.MAX_WBITS


def _utf8_headers(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """The headers with names and values read as UTF-8 (the client reads Latin-1)."""
    if all(name.isascii() and value.isascii() for name, value in headers.items()):
        return headers
    return CIMultiDict((_utf8(name), _utf8(value)) for name, value in headers.items())


def _utf8(text: str) -> str:
    return text.encode("latin-1").decode("utf-8", "surrogateescape")
