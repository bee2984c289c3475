"""The upstreams behind the hostile-input sidecar: a recording echo app and a raw answerer.

``Recorder`` is an aiohttp app that keeps every call (path, ``Idempotency-Key``, JSON body) and
answers ``{"ok": true}`` (on a path ending in ``/mirror``: the body it received, and a
``Set-Cookie`` made of its ``password`` field). ``RawAnswers`` is a bare asyncio server
that reads a request and sends back, byte for byte, the response registered for its path: how a
broken or malicious service answers (``NaN`` in JSON, NUL characters, bytes that are not UTF-8
in a header, ...).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Call:
    """One request the recorder received."""

    method: str
    path: str
    key: str | None
    body: Any


class Recorder:
    """Records every call and answers 200 ``{"ok": true}``."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        """The application to serve."""
        app = web.Application(
            client_max_size=64 * 1024**2,
            handler_args={"max_field_size": 64 * 1024, "max_line_size": 64 * 1024},
        )
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def calls_to(self, path: str) -> list[Call]:
        """The calls to ``path`` so far, in arrival order."""
        with self._lock:
            return [c for c in self.calls if c.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        call = Call(request.method, request.path, request.headers.get("Idempotency-Key"), body)
        with self._lock:
            self.calls.append(call)
        if request.path.endswith("/mirror"):  # repeats the body, sets a cookie from it
            secret = body.get("password", "") if isinstance(body, dict) else ""
            cookie = f"session={secret}; HttpOnly"
            return web.json_response({"received": body}, headers={"Set-Cookie": cookie})
        return web.json_response({"ok": True})


def raw_response(
    body: bytes, content_type: bytes = b"application/json", extra: bytes = b""
) -> bytes:
    """A complete HTTP/1.1 response with ``body`` and any ``extra`` raw header lines."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n" + extra
        + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )  # fmt: skip


class RawAnswers:
    """A raw HTTP server answering each path with the bytes registered for it."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        self.answers = answers
        self.hits: dict[str, int] = {}
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen on 127.0.0.1; return the base URL."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening."""
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode("ascii")
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            self.hits[path] = self.hits.get(path, 0) + 1
            writer.write(self.answers.get(path, raw_response(b'{"unknown": true}')))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
