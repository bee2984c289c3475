"""Reading a client's request body: the one reader behind every route of the public listener.

A ``BodyReader`` holds a size limit and the ``limits.read_timeout`` between body chunks. It
refuses a body over the limit as soon as its declared ``Content-Length`` or the bytes received
say so (``RequestBodyTooLarge`` → 413) and one the client stops sending (``RequestBodyTimeout``
→ 408), both answered as problem+json on a connection that is then closed; a client that
closes its connection mid-body is ``ClientAborted`` (499 in the access line, nothing to answer).
The idempotency guard reads a covered body whole (to fingerprint it), the forwarder streams an
uncovered one, and a saga trigger reads its input whole; each with its own limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.errors import ClientAborted, RequestBodyTimeout, RequestBodyTooLarge
from proxy.upstream import RequestBody


class BodyReader:
    """Reads request bodies up to ``limit`` bytes, waiting at most ``read_timeout`` per chunk."""

    __slots__ = ("limit", "read_timeout")

    def __init__(self, limit: int, read_timeout: float | None = None) -> None:
        self.limit = limit
        self.read_timeout = read_timeout

    def check(self, size: int | None) -> None:
        """Refuse a body of ``size`` bytes (declared or read; None: not known yet).

        Raises:
            RequestBodyTooLarge: ``size`` is over the limit.
        """
        if size is not None and size > self.limit:
            raise RequestBodyTooLarge(self.limit)

    async def chunks(self, request: web.Request) -> AsyncIterator[bytes]:
        """Yield the body chunk by chunk (what already arrived without waiting).

        Raises:
            RequestBodyTooLarge: past the limit.
            RequestBodyTimeout: the client sent nothing for ``read_timeout`` seconds.
            ClientAborted: the client closed its connection before the body ended.
        """
        stream = request.content
        received = 0
        while True:
            chunk = stream.read_nowait()
            if not chunk:
                if stream.at_eof():
                    return
                try:
                    async with asyncio.timeout(self.read_timeout):
                        chunk = await stream.readany()
                except TimeoutError:
                    raise RequestBodyTimeout(self.read_timeout or 0) from None
                except ConnectionResetError:
                    raise ClientAborted from None
                if not chunk:
                    return
            received += len(chunk)
            self.check(received)
            yield chunk

    async def read(self, request: web.Request) -> bytes:
        """The whole body (``b""`` when the request has none).

        Raises:
            RequestBodyTooLarge: its declared length or its bytes are over the limit.
            RequestBodyTimeout: the client paused longer than ``read_timeout``.
        """
        if not request.body_exists:
            return b""
        self.check(request.content_length)
        return b"".join([chunk async for chunk in self.chunks(request)])

    async def relayable(self, request: web.Request, whole_up_to: int) -> RequestBody:
        """The body to send on: None when there is none, whole bytes when it is of declared
        length up to ``whole_up_to``, otherwise a stream that enforces the limit as it goes.

        Raises:
            RequestBodyTooLarge: its declared length is over the limit (a stream raises later).
        """
        if not request.body_exists:
            return None
        length = request.content_length
        self.check(length)
        if length is not None and length <= whole_up_to and request.content.is_eof():
            return request.content.read_nowait()  # all of it arrived with the head
        chunks = self.chunks(request)
        if length is None or length > whole_up_to:
            return chunks
        return b"".join([chunk async for chunk in chunks])
