"""A raw HTTP/1.1 connection for tests that must control every byte sent to the sidecar."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from yarl import URL

WAIT = 5.0


@dataclass
class RawResponse:
    """One HTTP/1.x response read off a socket."""

    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        """The body as a problem document, checking its media type and members."""
        assert self.headers["content-type"] == "application/problem+json"
        problem: dict[str, Any] = json.loads(self.body)
        assert problem["status"] == self.status
        assert {"type", "title", "status", "detail"} <= problem.keys()
        return problem


class Connection:
    """A raw TCP connection to the sidecar's public listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        """Connect to the host and port of ``base_url``."""
        url = URL(base_url)
        reader, writer = await asyncio.open_connection(url.host, url.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write ``data`` as is."""
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> RawResponse:
        """Read one response whose body is delimited by Content-Length."""
        async with asyncio.timeout(WAIT):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in filter(None, lines):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(int(status_line.split()[1]), headers, body)

    async def closed_by_peer(self) -> bool:
        """Whether the sidecar closes the connection (EOF) without sending anything more."""
        async with asyncio.timeout(WAIT):
            return await self.reader.read() == b""

    async def close(self) -> None:
        """Close our end."""
        self.writer.close()
        await self.writer.wait_closed()
