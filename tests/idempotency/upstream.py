"""The app the idempotency tests put behind the sidecar: it counts every execution.

Every route is a "side effect": each call increments ``executions[path]`` when it starts and
``finished[path]`` when its answer is ready, so a test can prove a request ran exactly once.

Routes (any method):
    /charge            201 JSON naming the execution, with Set-Cookie, ETag, Location, X-Custom
    /status/{code}     answers ``code`` with a small JSON body
    /slow/{seconds}    sleeps, then 201
    /big/{size}        201 with a body of ``size`` bytes
    /random/{size}     201 with ``size`` random (incompressible) bytes
    /cut               promises 100 kB, sends 10 kB, drops the connection
    /gzip              201 with a pre-compressed body and Content-Encoding: gzip
    anything else      200 JSON describing the request
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
from collections import Counter
from typing import Any

from aiohttp import web

GZIP_PLAIN = b'{"compressed": true}' * 50


class CountingUpstream:
    """An aiohttp app whose handlers count their executions."""

    def __init__(self) -> None:
        self.executions: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.keys_seen: list[str | None] = []
        self._progress = asyncio.Event()

    @property
    def total(self) -> int:
        """Executions over every path."""
        return sum(self.executions.values())

    def app(self) -> web.Application:
        """The application to serve."""
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def wait_started(self, path: str, count: int = 1, within: float = 5.0) -> None:
        """Wait until ``path`` started ``count`` executions."""
        async with asyncio.timeout(within):
            while self.executions[path] < count:
                await self._progress.wait()
                self._progress.clear()

    async def wait_finished(self, path: str, count: int = 1, within: float = 5.0) -> None:
        """Wait until ``path`` finished ``count`` executions."""
        async with asyncio.timeout(within):
            while self.finished[path] < count:
                await self._progress.wait()
                self._progress.clear()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.executions[request.path] += 1
        self._progress.set()
        self.keys_seen.append(request.headers.get("Idempotency-Key"))
        body = await request.read()
        try:
            return await self._answer(request, body)
        finally:
            self.finished[request.path] += 1
            self._progress.set()

    async def _answer(self, request: web.Request, body: bytes) -> web.StreamResponse:
        parts = request.path.strip("/").split("/")
        if parts[0] == "charge":
            return self._charge(request, body)
        if parts[0] == "status":
            return web.json_response({"status": int(parts[1])}, status=int(parts[1]))
        if parts[0] == "slow":
            await asyncio.sleep(float(parts[1]))
            return web.json_response({"slept": float(parts[1])}, status=201)
        if parts[0] == "big":
            return web.Response(body=b"b" * int(parts[1]), status=201)
        if parts[0] == "random":
            return web.Response(body=os.urandom(int(parts[1])), status=201)
        if parts[0] == "cut":
            return await _cut_short(request)
        if parts[0] == "gzip":
            return web.Response(
                body=gzip.compress(GZIP_PLAIN),
                status=201,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        return web.json_response(_describe(request, body, self.executions[request.path]))

    def _charge(self, request: web.Request, body: bytes) -> web.Response:
        execution = self.executions[request.path]
        payload = {"charge": f"ch_{execution}", "body_sha256": hashlib.sha256(body).hexdigest()}
        response = web.Response(
            status=201,
            body=json.dumps(payload).encode(),
            content_type="application/json",
            headers={
                "ETag": f'"v{execution}"',
                "Location": f"/charges/ch_{execution}",
                "X-Custom": "kept",
                "Cache-Control": "no-store",
            },
        )
        response.set_cookie("session", f"s{execution}")
        return response


def _describe(request: web.Request, body: bytes, execution: int) -> dict[str, Any]:
    return {
        "method": request.method,
        "path_qs": request.path_qs,
        "execution": execution,
        "body_length": len(body),
    }


async def _cut_short(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=201)
    response.content_length = 100_000
    await response.prepare(request)
    await response.write(b"x" * 10_000)
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.abort()
    return response
