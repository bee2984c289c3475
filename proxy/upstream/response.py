"""An upstream answer whose headers have arrived, with its body still to be read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from multidict import CIMultiDict

from proxy.errors import UpstreamConnectionError
from proxy.upstream.connection import ResponseHead, UpstreamConnection


class UpstreamResponse:
    """Status, headers and the body of one upstream answer, read chunk by chunk.

    A pause longer than ``read_timeout`` between body chunks raises ``TimeoutError``; a broken
    connection raises ``UpstreamConnectionError``; the first such failure is also handed to
    ``on_body_error``. ``release`` (or leaving ``async with``) hands the connection back to its
    pool when the whole answer was read, and closes it otherwise.
    """

    def __init__(
        self,
        head: ResponseHead,
        connection: UpstreamConnection,
        read_timeout: float | None,
        on_release: Callable[[UpstreamConnection], None],
        on_body_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers: CIMultiDict[str] = head.headers
        self.content_length = head.content_length
        self._connection = connection
        self._read_timeout = read_timeout
        self._on_release: Callable[[UpstreamConnection], None] | None = on_release
        self._on_body_error = on_body_error

    async def read_chunk(self) -> bytes:
        """The next piece of the body as it arrived; ``b""`` once the body has ended."""
        connection = self._connection
        try:
            while True:
                chunk = connection.take()
                if chunk is not None:
                    return chunk
                async with asyncio.timeout(self._read_timeout):
                    await connection.wait_body()
        except (TimeoutError, UpstreamConnectionError) as exc:
            report, self._on_body_error = self._on_body_error, None
            if report is not None:
                report(exc)
            raise

    def read_if_complete(self) -> bytes | None:
        """The rest of the body at once when it has all arrived already, else None."""
        return self._connection.take_all()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive."""
        while chunk := await self.read_chunk():
            yield chunk

    async def read(self) -> bytes:
        """The whole body."""
        first = await self.read_chunk()
        if not first:
            return b""
        chunks = [first]
        while chunk := await self.read_chunk():
            chunks.append(chunk)
        return b"".join(chunks)

    def release(self) -> None:
        """Give the connection back (reused only when the answer was read to its end)."""
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release(self._connection)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
