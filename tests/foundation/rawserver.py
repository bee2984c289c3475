"""A hand-driven HTTP/1.1 server for tests that must control every byte an upstream sends.

``RawServer`` listens on 127.0.0.1 and runs ``handler(peer)`` once per accepted connection;
the handler reads requests off the ``Peer`` and writes whatever bytes it likes back. The server
keeps every ``Peer`` (so tests can count connections and look at the bytes each one received)
and every exception a handler raised (so a failed assertion inside a handler is not lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable

WAIT = 5.0
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)")


def response(status: str = "200 OK", body: bytes = b"", *headers: str) -> bytes:
    """A response with ``body`` framed by Content-Length, plus the given header lines."""
    lines = "".join(f"{line}\r\n" for line in headers)
    return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
        status.encode(),
        lines.encode(),
        len(body),
        body,
    )


class Peer:
    """One accepted connection: ``index`` counts from 0 in order of acceptance."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int):
        self.reader = reader
        self.writer = writer
        self.index = index
        self.requests: list[bytes] = []
        self.ended = asyncio.Event()

    async def head(self) -> bytes | None:
        """The next request head (through the blank line); None when the client closed first."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        except ConnectionResetError:
            return None
        self.requests.append(head)
        return head

    async def request(self) -> bytes | None:
        """The next whole request, head and raw body bytes as received; None at EOF."""
        head = await self.head()
        if head is None:
            return None
        lowered = head.lower()
        if match := _CONTENT_LENGTH.search(lowered):
            body = await self.reader.readexactly(int(match[1]))
        elif b"\r\ntransfer-encoding: chunked\r\n" in lowered:
            body = await self._chunked_body()
        else:
            body = b""
        self.requests[-1] = head + body
        return head + body

    async def send(self, *parts: bytes) -> None:
        """Write each part in its own write, letting the loop run in between (own segments)."""
        for number, part in enumerate(parts):
            if number:
                await asyncio.sleep(0.01)
            self.writer.write(part)
            await self.writer.drain()

    async def until_eof(self) -> bytes:
        """Everything the client sends until it closes the connection (or resets it)."""
        received = bytearray()
        try:
            while data := await self.reader.read(256 * 1024):
                received += data
        except ConnectionResetError:
            pass
        return bytes(received)

    async def close(self) -> None:
        """Close our end of the connection."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def _chunked_body(self) -> bytes:
        raw = bytearray()
        while True:
            line = await self.reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0], 16)
            raw += line + await self.reader.readexactly(size + 2)
            if size == 0:
                return bytes(raw)


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """Serves ``handler`` on 127.0.0.1; ``peers`` are the connections accepted so far."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on a kernel-chosen port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """Base URL of the server, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        """Stop listening, close every connection and wait for the handlers to end."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for peer in self.peers:
            peer.writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WAIT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(reader, writer, len(self.peers))
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except Exception as exc:  # reported by the fixture after the test
            self.errors.append(exc)
        finally:
            writer.close()
            peer.ended.set()


StartServer = Callable[[Handler], Awaitable[RawServer]]
